"""``geogate ctl``: read and change a fleet's shared config in Redis, read the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import json

from redis.exceptions import RedisError

from gateway.checks import redact_url, redis_url
from gateway.cli.errors import CLIError
from gateway.errors import FleetConfigInvalid
from gateway.fleet import config_doc, config_io
from gateway.fleet.keys import Keys, connect

CTL_TIMEOUT_S = 3.0


async def _ctl(args: argparse.Namespace) -> None:
    keys = Keys(args.deployment)
    try:
        redis_url(args.redis)
    except ValueError as exc:
        raise CLIError(f"--redis {exc}") from None  # the URL in it has its password masked
    r = connect(args.redis, CTL_TIMEOUT_S)
    try:
        doc, version = await config_io.load(r, keys)
        if args.ctl_command == "audit":
            rows = await config_io.read_audit(r, keys, args.count)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                print(
                    f"{row['when']}  v{row['version']:<4} {row['who']:<12} {row['what']}: "
                    f"{row['before']} -> {row['after']}"
                )
            return
        if doc is None:
            raise CLIError(
                f"no fleet config in Redis for deployment {args.deployment!r}: "
                "start a gateway with --redis first (it seeds the config)"
            )
        if args.ctl_command == "show":
            print(json.dumps({"version": version, **doc}, indent=2))
            return
        changes = {
            k: v
            for k, v in (
                ("weight", args.weight),
                ("bias_ms", args.bias_ms),
                ("drained", args.drained),
            )
            if v is not None
        }
        base = config_doc.base_config(doc)
        new_version, _, entry = await config_io.update_upstream(
            r, keys, base, args.upstream, changes, args.who
        )
        print(
            f"upstream {args.upstream}: {entry['before']} -> {entry['after']} "
            f"(fleet config version {new_version})"
        )
    finally:
        await r.aclose()


def run_ctl(args: argparse.Namespace) -> None:
    try:
        asyncio.run(_ctl(args))
    except FleetConfigInvalid as exc:
        raise CLIError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise CLIError(f"cannot reach Redis at {redact_url(args.redis)}: {exc}") from None
