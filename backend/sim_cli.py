"""``geogate sim-backend``'s arguments. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from backend.cli import DRAIN_BACKSTOP_S, EXIT_USAGE, OneLineParser, check_listen, port
from backend.errors import BackendError, clipped
from backend.sim import SimBackend
from backend.sim_config import CLOCKS, SimConfig

# The listen backlog: aiohttp's default of 128 overflowed at 1,000 new connections/s (SYN
# retries then cost clients seconds); Linux caps it at net.core.somaxconn (4096 since 5.4).
DEFAULT_BACKLOG = 4096
# SIGTERM: requests in flight get this long, then the process exits; aiohttp's own default,
# 60 s, held a test's or a supervisor's stop for a minute behind a slow stream.
DRAIN_TIMEOUT_S = 5.0
MAX_DRAIN_TIMEOUT_S = 3600.0


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
    s.add_argument(
        "--max-waiting",
        type=int,
        default=0,
        help="with --max-concurrency: this many more wait for a slot (vLLM's waiting "
        "requests, in vllm:num_requests_waiting) before the 429s",
    )
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
    s.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help="seconds requests in flight get after SIGTERM",
    )
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
        print(f"geogate: {clipped(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        run(cfg, args.host, args.port, args.backlog, args.drain_timeout)
    except KeyboardInterrupt:
        sys.exit(130)


def _bounds(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """(out of bounds, what to say) per option: -1 made every request a 429 (max
    concurrency) or a 500 with a traceback (tokens); 99 dropped the connection, 200 sent an
    error body as a success (error status)."""
    return [
        (not 0 <= args.error_rate <= 1, "--error-rate must be between 0 and 1"),
        (args.backlog < 1, "--backlog must be at least 1"),
        (
            not 0 <= args.drain_timeout <= MAX_DRAIN_TIMEOUT_S,  # NaN too
            f"--drain-timeout must be 0 to {MAX_DRAIN_TIMEOUT_S:g} seconds",
        ),
        (args.max_concurrency < 0, "--max-concurrency must be at least 0 (0: no cap)"),
        (args.max_waiting < 0, "--max-waiting must be at least 0"),
        (args.max_waiting and not args.max_concurrency, "--max-waiting needs --max-concurrency"),
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
        max_waiting=args.max_waiting,
        default_tokens=args.tokens,
        abort_after=args.abort_after,
        abort_mid_event=args.abort_mid_event,
        seed=args.seed,
        name=args.name,
        stamp=args.stamp,
    )


def run(cfg: SimConfig, host: str, port: int, backlog: int, drain_s: float) -> None:
    import uvloop

    app = SimBackend(cfg).app()
    _cut_at(app, drain_s)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        handle_signals=True,
        backlog=backlog,
        shutdown_timeout=drain_s + DRAIN_BACKSTOP_S,  # a backstop: the cut is _cut_at's
        # A client gone cancels its handler, as in the model server: a non-streaming answer
        # held its place (/stats active, the load a gateway routes on) to its end.
        handler_cancellation=True,
    )


def _cut_at(app: web.Application, drain_s: float) -> None:
    """Requests still in flight ``drain_s`` after SIGTERM are cancelled: aiohttp's own cut
    (shutdown_timeout) cancels the body reader, which a handler pacing tokens never awaits,
    and then waits as long again (a 5 s drain took 12 s), as the model server found."""
    handling: set[asyncio.Task[Any]] = set()

    @web.middleware
    async def tracked(request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each request in a task of its own
        handling.add(task)
        try:
            return await handler(request)
        finally:
            handling.discard(task)

    async def shutting_down(app: web.Application) -> None:
        def cut() -> None:
            for task in handling:
                task.cancel()

        asyncio.get_running_loop().call_later(drain_s, cut)

    app.middlewares.insert(0, tracked)
    app.on_shutdown.append(shutting_down)
