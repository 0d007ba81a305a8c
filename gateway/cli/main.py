"""The ``geogate`` command. Errors are one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import NoReturn

from gateway import defaults as d
from gateway.cli.errors import EXIT_USAGE, CLIError, OneLineParser
from gateway.defaults import AUDIT_MAX_COUNT
from gateway.errors import GatewayError, clipped
from geodb.errors import GeoDBError

EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE's number: what a shell reports for `... | head`
EXIT_FAILED = 1  # the output could not be written
FULL_OUTPUT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, refused while the arguments
    are parsed, not later by whatever it is handed to (the kernel, Redis) in its own words."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: seconds, finite, not negative, at most a week (DURATION_MAX_S, as
    the config's durations: more was blamed on Redis's document, which it was copied into)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= d.DURATION_MAX_S):
        raise argparse.ArgumentTypeError(
            f"must be 0 to {d.DURATION_MAX_S:.0f} seconds (a week), got {text}"
        )
    return value


# Commands whose parsers live with heavy modules (world: its processes, aiohttp, rich; plan:
# its search and charts), imported for a run of that command alone: building them for every
# command cost each `geogate gateway` and `geogate ctl` 0.4 s of imports it never used.
# Each one's help line, as `geogate --help` lists it.
_HEAVY = {
    "world": (
        "gateway.cli.world_run",
        "emulated world on loopback: three topologies, events, TTFT per site",
    ),
    "plan": ("gateway.cli.plan", "where to put GPUs: cost against latency per placement"),
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser, with ``command``'s own arguments where it is one of _HEAVY's."""
    p = OneLineParser(prog="geogate", description="Geo-aware inference gateway.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("backend", help="the model server: geogate backend --help", add_help=False)
    sub.add_parser(
        "sim-backend",
        help="a simulated OpenAI-compatible model server: geogate sim-backend --help",
        add_help=False,
    )

    g = sub.add_parser("gateway", help="run the gateway")
    g.add_argument("--config", type=Path, required=True, help="TOML config file")
    g.add_argument("--redis", metavar="URL", help="shared state (same as redis.url)")
    g.add_argument(
        "--check",
        action="store_true",
        help="check the config (and the files it names) as a start would, say what it "
        "describes, and exit: 0 if it would start, 2 with the first error",
    )

    d = sub.add_parser("demo", help="the quickstart: three regions, five cities, a failover")
    d.add_argument("--keep-running", action="store_true", help="leave the gateway up")
    d.add_argument(
        "--port", type=_whole(0, 65535), default=0, help="gateway port (0 = any free port)"
    )

    ctl = sub.add_parser(
        "ctl", help="operate a fleet: drain, undrain, weight, top, show, set, audit"
    )
    ctl.add_argument(
        "--gateway",
        metavar="URL",
        help="a gateway's ops listener, e.g. http://127.0.0.1:9180 (env GEOGATE_CTL_GATEWAY)",
    )
    ctl.add_argument(
        "--token",
        help="your operator token (admin.tokens): the audit names you (env GEOGATE_CTL_TOKEN)",
    )
    ctl.add_argument(
        "--ops-token",
        help="the gateway's ops.token, if it has one, for top (env GEOGATE_CTL_OPS_TOKEN)",
    )
    ctl.add_argument("--redis", metavar="URL", help="or straight to the fleet's Redis")
    ctl.add_argument("--deployment", default="default", help="with --redis: redis.deployment")
    ctl.add_argument(
        "--restart-grace",
        type=_seconds,
        metavar="S",
        help="with --redis: the fleet's redis.restart_grace_s where not its default (a change "
        "waits this long after Redis started)",
    )
    csub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="SUBCOMMAND")
    who = OneLineParser(add_help=False)
    who.add_argument("--who", help="with --redis: operator name for the audit (default $USER)")
    who.add_argument(
        "--yes",
        action="store_true",
        help="make the change even if the gateway says it leaves clients with no upstream (503)",
    )
    for name, verb in (("drain", "take out of"), ("undrain", "put back into")):
        dr = csub.add_parser(
            name, parents=[who], help=f"{verb} rotation a region (all its upstreams) or upstream"
        )
        dr.add_argument("target", metavar="REGION|UPSTREAM")
    wt = csub.add_parser("weight", parents=[who], help="set an upstream's routing weight")
    wt.add_argument("upstream")
    wt.add_argument("weight", type=float, help="0 = standby; shares among near-equal upstreams")
    tp = csub.add_parser("top", help="live view of regions and upstreams (needs --gateway)")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    csub.add_parser("show", help="the fleet's routing config and version")
    st = csub.add_parser("set", parents=[who], help="change one upstream fleet-wide (audited)")
    st.add_argument("upstream")
    st.add_argument("--weight", type=float)
    st.add_argument("--bias-ms", type=float)
    # One or the other: both would have been taken as whichever came last.
    drain_or_not = st.add_mutually_exclusive_group()
    drain_or_not.add_argument("--drain", dest="drained", action="store_const", const=True)
    drain_or_not.add_argument("--undrain", dest="drained", action="store_const", const=False)
    csub.add_parser(
        "restore",
        help="put the document a gateway routes on back over one in Redis it refuses "
        "(needs --gateway; audited)",
    )
    au = csub.add_parser("audit", help="operator changes, newest first")
    au.add_argument(
        "--count", type=_whole(1, AUDIT_MAX_COUNT), default=20, help="how many, newest first"
    )
    au.add_argument("--json", action="store_true")

    geo = sub.add_parser("geodb", help="GeoIP tools")
    gsub = geo.add_subparsers(dest="geodb_command", required=True, metavar="SUBCOMMAND")
    lk = gsub.add_parser("lookup", help="locate an IP and show the region it would route to")
    lk.add_argument("ip")
    lk.add_argument("--db", type=Path, help="GeoIP .mmdb (default: the config's)")
    lk.add_argument("--config", type=Path, help="gateway config, to show the routing choice")
    lk.add_argument("--model", help="model to route (default: the first one configured)")
    lk.add_argument("--json", action="store_true", help="machine-readable output")
    b = gsub.add_parser(
        "build",
        help="build a City .mmdb from CSV",
        description="Build a City-format .mmdb from CSV rows. Networks may overlap: the most "
        "specific row wins for the addresses it covers, whatever the order of the rows. The "
        "same network twice, host bits (10.0.0.5/8), a country that is not an ISO 3166-1 "
        "alpha-2 code and control characters in the city are refused, each by line number.",
    )
    b.add_argument("csv", type=Path, help="rows: network,country,continent,lat,lon[,city]")
    b.add_argument("out", type=Path)

    from gateway.cli import dns

    dns.add_parser(sub)
    for name, (module, said) in _HEAVY.items():
        if name == command:
            import_module(module).add_parser(sub, said)
        else:  # listed in `geogate --help`; its own parser is built only for a run of it
            sub.add_parser(name, help=said, add_help=False)
    return p


def _handed_over(argv: list[str]) -> bool:
    """The model server and the simulated backend have parsers of their own (and the model
    server heavy imports: torch): hand them their arguments whole."""
    if argv[:1] == ["backend"]:
        from backend.cli import main as backend_main

        backend_main(argv[1:])
        return True
    if argv[:1] == ["sim-backend"]:
        from backend.sim_cli import main as sim_main

        sim_main(argv[1:])
        return True
    return False


def _command(args: argparse.Namespace) -> Callable[[argparse.Namespace], None]:
    from gateway.cli import commands

    if args.command == "geodb":
        return commands.lookup if args.geodb_command == "lookup" else commands.build
    if args.command == "ctl":
        from gateway.cli.ctl import run_ctl

        return run_ctl
    if args.command == "dns":
        from gateway.cli.dns import export

        return export
    if args.command == "world":
        from gateway.cli.world_run import run_command

        return run_command
    if args.command == "plan":
        from gateway.cli.plan import run_command as run_plan

        return run_plan
    if args.command == "demo":
        from gateway.cli.demo import run_demo

        return lambda a: run_demo(keep_running=a.keep_running, port=a.port)
    return commands.gateway


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if _handed_over(argv):
            return
        args = _parser(argv[0] if argv else None).parse_args(argv)
        _command(args)(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        _reader_gone()
    except OSError as exc:
        if exc.errno not in FULL_OUTPUT:
            raise
        # `geogate ctl audit > /dev/full`, a full disk: one line, not a traceback
        print(
            f"geogate: cannot write the output: {os.strerror(exc.errno).lower()}", file=sys.stderr
        )
        _drop_stdout()
        sys.exit(EXIT_FAILED)
    except (GatewayError, GeoDBError, CLIError) as exc:
        # Every one-line error is printed here: the values it echoes are cut here too.
        print(f"geogate: {clipped(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt as exc:
        # Ctrl-C: 130; SIGTERM or SIGHUP, raised as procs.Terminated: 128 + its number, as a
        # shell reports a process the signal ended
        sys.exit(128 + getattr(exc, "signum", signal.SIGINT))


def _reader_gone() -> NoReturn:
    """Whoever read our output stopped (``geogate ctl audit | head -2``): end quietly, as a
    process SIGPIPE ended would, with 128 + 13. Output still buffered goes to /dev/null, or
    flushing it at exit would raise again (the Python docs' recipe for SIGPIPE)."""
    _drop_stdout()
    sys.exit(EXIT_BROKEN_PIPE)


def _drop_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    main()
