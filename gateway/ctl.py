"""``geogate ctl``: read and change a fleet's shared config in Redis, read the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from redis.exceptions import RedisError

from gateway import fleet_config
from gateway.config import Config
from gateway.errors import BadRequest
from gateway.fleet_keys import Keys, connect

CTL_TIMEOUT_S = 3.0


class CtlError(Exception):
    """One line for the operator."""


async def _ctl(args: argparse.Namespace) -> None:
    keys = Keys(args.deployment)
    r = connect(args.redis, CTL_TIMEOUT_S)
    try:
        doc, version = await fleet_config.load(r, keys)
        if args.ctl_command == "audit":
            rows = await fleet_config.read_audit(r, keys, args.count)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                print(
                    f"{row['when']}  v{row['version']:<4} {row['who']:<12} {row['what']}: "
                    f"{row['before']} -> {row['after']}"
                )
            return
        if doc is None:
            raise CtlError(
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
        base = _base_config(doc)
        new_version, _, entry = await fleet_config.update_upstream(
            r, keys, base, args.upstream, changes, args.who
        )
        print(
            f"upstream {args.upstream}: {entry['before']} -> {entry['after']} "
            f"(fleet config version {new_version})"
        )
    finally:
        await r.aclose()


def _base_config(doc: dict[str, Any]) -> Config:
    """A Config around the fleet document, for validation: ctl has no gateway file."""
    first = doc["regions"][0]["id"] if doc.get("regions") else "none"
    return Config.model_validate({"gateway": {"region": first}, **doc})


def run_ctl(args: argparse.Namespace) -> None:
    from gateway.cli import CLIError

    try:
        asyncio.run(_ctl(args))
    except (CtlError, BadRequest) as exc:
        raise CLIError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise CLIError(f"cannot reach Redis at {args.redis}: {exc}") from None
