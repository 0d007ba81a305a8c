"""The ``geogate`` command. Errors are one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Config, load_config
from gateway.errors import GatewayError
from geodb.errors import GeoDBError

EXIT_USAGE = 2


class CLIError(Exception):
    """A one-line message for the person at the terminal."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geogate", description="Geo-aware inference gateway.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("backend", help="the model server: geogate backend --help", add_help=False)

    g = sub.add_parser("gateway", help="run the gateway")
    g.add_argument("--config", type=Path, required=True, help="TOML config file")
    g.add_argument("--redis", metavar="URL", help="shared state (same as redis.url)")

    s = sub.add_parser("sim-backend", help="run a simulated OpenAI-compatible model server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--region", default="local")
    s.add_argument("--model", action="append", help="model name served (repeatable)")
    s.add_argument("--name", default="", help="label shown in /stats")
    s.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    s.add_argument("--tokens-per-s", type=float, default=0.0, help="0 = all at once")
    s.add_argument("--delay-ms", type=float, default=0.0, help="added network delay")
    s.add_argument("--error-rate", type=float, default=0.0, help="share answered in error")
    s.add_argument("--error-status", type=int, default=500, help="status of those errors")
    s.add_argument("--max-concurrency", type=int, default=0, help="429 beyond (0 = no cap)")
    s.add_argument("--tokens", type=int, default=16, help="tokens when max_tokens is absent")
    s.add_argument("--abort-after", type=int, default=0, help="die after N streamed tokens")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stamp", action="store_true", help="SSE comment with emission time")

    d = sub.add_parser("demo", help="the quickstart: three regions, five cities, a failover")
    d.add_argument("--keep-running", action="store_true", help="leave the gateway up")
    d.add_argument("--port", type=int, default=0, help="gateway port (0 = any free port)")

    ctl = sub.add_parser("ctl", help="operate a fleet through Redis: show, set, audit")
    ctl.add_argument("--redis", metavar="URL", required=True)
    ctl.add_argument("--deployment", default="default")
    csub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="SUBCOMMAND")
    csub.add_parser("show", help="the fleet's routing config and version")
    st = csub.add_parser("set", help="change one upstream fleet-wide (audited)")
    st.add_argument("upstream")
    st.add_argument("--weight", type=float)
    st.add_argument("--bias-ms", type=float)
    st.add_argument("--drain", dest="drained", action="store_const", const=True)
    st.add_argument("--undrain", dest="drained", action="store_const", const=False)
    st.add_argument("--who", default=os.environ.get("USER", "ctl"), help="operator name")
    au = csub.add_parser("audit", help="operator changes, newest first")
    au.add_argument("--count", type=int, default=20)
    au.add_argument("--json", action="store_true")

    geo = sub.add_parser("geodb", help="GeoIP tools")
    gsub = geo.add_subparsers(dest="geodb_command", required=True, metavar="SUBCOMMAND")
    lk = gsub.add_parser("lookup", help="locate an IP and show the region it would route to")
    lk.add_argument("ip")
    lk.add_argument("--db", type=Path, help="GeoIP .mmdb (default: the config's)")
    lk.add_argument("--config", type=Path, help="gateway config, to show the routing choice")
    lk.add_argument("--model", help="model to route (default: the first one configured)")
    lk.add_argument("--json", action="store_true", help="machine-readable output")
    b = gsub.add_parser("build", help="build a City .mmdb from CSV")
    b.add_argument("csv", type=Path, help="rows: network,country,continent,lat,lon[,city]")
    b.add_argument("out", type=Path)
    return p


def cmd_gateway(args: argparse.Namespace) -> None:
    from gateway import server
    from gateway.app import build_runtime
    from gateway.runtime import setup_logging

    setup_logging()
    if args.redis:
        # An override like any other: worker processes read it from the environment too.
        os.environ["GEOGATE_REDIS__URL"] = args.redis
    config = load_config(args.config)
    build_runtime(config)  # fail here, in one line, on a bad GeoIP file — not in a worker
    server.run(config, args.config)


def cmd_sim(args: argparse.Namespace) -> None:
    from gateway.sim_backend import SimConfig, run

    if not 0 <= args.error_rate <= 1:
        raise CLIError("--error-rate must be between 0 and 1")
    cfg = SimConfig(
        region=args.region,
        models=tuple(args.model or ["sim-model"]),
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        delay_ms=args.delay_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        max_concurrency=args.max_concurrency,
        default_tokens=args.tokens,
        abort_after=args.abort_after,
        seed=args.seed,
        name=args.name,
        stamp=args.stamp,
    )
    run(cfg, args.host, args.port)


def cmd_lookup(args: argparse.Namespace) -> None:
    from gateway.app import default_location, open_geo
    from gateway.router import RequestFacts, route
    from gateway.runtime import policy_from
    from gateway.state import MemoryStateStore
    from geodb.location import Location
    from geodb.reader import GeoIPSource, GeoSource

    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise CLIError(f"{args.ip!r} is not an IP address") from None
    config: Config | None = load_config(args.config) if args.config else None
    if args.db:
        fallback = default_location(config) if config else Location(0.0, 0.0)
        geo: GeoSource = GeoIPSource(args.db, fallback)
    elif config:
        geo = open_geo(config)
    else:
        raise CLIError("give --db PATH or --config FILE (whose geoip.database is used)")
    loc = geo.locate(ip)
    out: dict[str, object] = {"ip": str(ip), "location": loc.as_dict()}
    if config:
        model = args.model or (config.upstreams[0].models[0] if config.upstreams else "")
        # Offline: no probes ran, so every upstream counts as healthy here.
        snap = MemoryStateStore(config).snapshot(0.0)
        decision = route(RequestFacts(model, loc), snap, policy_from(config), random.Random(0))
        chosen = decision.chosen
        out["route"] = {
            "model": model,
            "region": chosen.upstream.region if chosen else None,
            "upstream": chosen.upstream.id if chosen else None,
            "header": decision.header(),
            "note": "offline view: assumes every configured upstream is healthy",
            "decision": decision.explain(),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{ip}: {loc.describe()}"
        + (f", accuracy {loc.accuracy_km:g} km" if loc.accuracy_km else "")
    )
    if "route" in out:
        r = out["route"]
        assert isinstance(r, dict)
        if r["region"]:
            print(
                f"routes to: region {r['region']} (upstream {r['upstream']}) for model "
                f"{r['model']!r} — {r['header']}"
            )
        else:
            print(f"routes to: nothing for model {r['model']!r} ({r['header']})")
        print(f"  ({r['note']})")


def cmd_build(args: argparse.Namespace) -> None:
    from geodb.build import build_from_csv

    n = build_from_csv(args.csv, args.out)
    print(f"wrote {args.out} with {n} network(s)")


def cmd_ctl(args: argparse.Namespace) -> None:
    from gateway.ctl import run_ctl

    run_ctl(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from gateway.demo import run_demo

    run_demo(keep_running=args.keep_running, port=args.port)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["backend"]:
        # The model server has its own parser and heavy imports (torch): hand over whole.
        from backend.cli import main as backend_main

        backend_main(argv[1:])
        return
    args = _parser().parse_args(argv)
    commands = {"gateway": cmd_gateway, "sim-backend": cmd_sim, "demo": cmd_demo, "ctl": cmd_ctl}
    try:
        if args.command == "geodb":
            (cmd_lookup if args.geodb_command == "lookup" else cmd_build)(args)
        else:
            commands[args.command](args)
    except (GatewayError, GeoDBError, CLIError) as exc:
        print(f"geogate: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
