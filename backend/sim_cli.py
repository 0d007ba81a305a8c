"""``geogate sim-backend``'s arguments. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backend.cli import EXIT_USAGE, OneLineParser, check_listen, port
from backend.errors import BackendError
from backend.sim import CLOCKS, SimConfig, run

# The listen backlog: aiohttp's default of 128 overflowed at 1,000 new connections/s (SYN
# retries then cost clients seconds); Linux caps it at net.core.somaxconn (4096 since 5.4).
DEFAULT_BACKLOG = 4096


def _parser() -> argparse.ArgumentParser:
    s = OneLineParser(
        prog="geogate sim-backend", description="A simulated OpenAI-compatible model server."
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port, required=True)
    s.add_argument("--region", default="local")
    s.add_argument("--model", action="append", help="model name served (repeatable)")
    s.add_argument("--name", default="", help="label shown in /stats")
    s.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    s.add_argument("--tokens-per-s", type=float, default=0.0, help="0 = all at once")
    s.add_argument(
        "--clock",
        choices=CLOCKS,
        default="stream",
        help="what paces tokens: " + "; ".join(f"{k}: {v}" for k, v in CLOCKS.items()),
    )
    s.add_argument("--delay-ms", type=float, default=0.0, help="added network delay")
    s.add_argument("--error-rate", type=float, default=0.0, help="share answered in error")
    s.add_argument("--error-status", type=int, default=500, help="status of those errors")
    s.add_argument("--max-concurrency", type=int, default=0, help="429 beyond (0 = no cap)")
    s.add_argument("--tokens", type=int, default=16, help="tokens when max_tokens is absent")
    s.add_argument("--abort-after", type=int, default=0, help="die after N streamed tokens")
    s.add_argument(
        "--abort-mid-event",
        action="store_true",
        help="with --abort-after: send half of the next event before dying",
    )
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stamp", action="store_true", help="SSE comment with emission time")
    s.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="listen backlog")
    return s


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(list(argv))
    problem = next((said for bad, said in _bounds(args) if bad), None)
    if problem is not None:
        print(f"geogate: {problem}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        cfg = _config(args)
        check_listen(args.host, args.port)
    except (ValueError, BackendError) as exc:  # SimConfig's own check: one line, as argparse's
        print(f"geogate: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        run(cfg, args.host, args.port, backlog=args.backlog)
    except KeyboardInterrupt:
        sys.exit(130)


def _bounds(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """(out of bounds, what to say) per option: -1 made every request a 429 (max
    concurrency) or a 500 with a traceback (tokens); 99 dropped the connection, 200 sent an
    error body as a success (error status)."""
    return [
        (not 0 <= args.error_rate <= 1, "--error-rate must be between 0 and 1"),
        (args.backlog < 1, "--backlog must be at least 1"),
        (args.max_concurrency < 0, "--max-concurrency must be at least 0 (0: no cap)"),
        (args.tokens < 0, "--tokens must be at least 0"),
        (not 400 <= args.error_status <= 599, "--error-status must be 400 to 599"),
    ]


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        region=args.region,
        models=tuple(args.model or ["sim-model"]),
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        clock=args.clock,
        delay_ms=args.delay_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        max_concurrency=args.max_concurrency,
        default_tokens=args.tokens,
        abort_after=args.abort_after,
        abort_mid_event=args.abort_mid_event,
        seed=args.seed,
        name=args.name,
        stamp=args.stamp,
    )
