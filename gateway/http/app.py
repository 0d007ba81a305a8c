"""The gateway's ASGI app: the proxy plus the gateway's own endpoints, and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from gateway import defaults as d
from gateway.client import Client
from gateway.config import Config
from gateway.config_file import ENV_CONFIG_FILE, load_config
from gateway.http.asgi import Receive, Scope, Send
from gateway.http.cors import Cors
from gateway.http.dispatch import GatewayApp
from gateway.http.endpoints import Endpoints, unknown_public
from gateway.http.errors import http_exception
from gateway.http.gate import StreamGate, capacity, fd_limit
from gateway.http.intake import Proxy
from gateway.http.ops import OpsListener
from gateway.logs import BatchingStreamHandler
from gateway.runtime import Runtime, access_log, build_runtime, log, setup_logging
from gateway.ticks import next_tick, phase
from gateway.watch import first_look, start_watchers


def create_app(
    config: Config | None = None,
    *,
    stop: Callable[[], None] | None = None,
    started: Callable[[], None] | None = None,
    ops_fd: int | None = None,
    ops_protocol: Callable[..., asyncio.Protocol] | None = None,
) -> Starlette:
    """The public app; with no config, read the file named by $GEOGATE_CONFIG (how worker
    processes of the ASGI server get it).

    ``stop``: how this worker's server stops; given, SIGTERM drains first (``http.gate``).
    ``started``: called once the lifespan's signal handling is in place (with ``stop``, the
    drain as SIGTERM's handler): gateway.engines ties granian's workers to their main there.
    ``ops_fd``: the ops listener's socket, bound by the parent (``http.ops``), served with
    ``ops_protocol`` (``gateway.h1.for_ops()``)."""
    if config is None:
        setup_logging()
        config = load_config(Path(os.environ[ENV_CONFIG_FILE]))
        setup_logging(config.log)
    rt = build_runtime(config)
    s = config.server
    proxy = Proxy(rt)
    streams = capacity(fd_limit(), s.max_streams, s.max_connections).streams
    gate = StreamGate(rt, proxy, streams, proxy.refuse)
    ops = None
    if ops_fd is not None:
        if ops_protocol is None:  # a caller's mistake, said, not an ops listener quietly off
            raise TypeError("create_app: ops_fd needs ops_protocol (gateway.h1.for_ops())")
        ops = OpsListener(rt, ops_fd, ops_protocol)
    app = GatewayApp(
        gate,  # /v1/* requests skip Starlette's stack (gateway.http.dispatch); same rule below
        Cors(s.cors_origins) if s.cors_origins else None,
        routes=[
            *Endpoints(rt).routes(proxy.recorded),
            # Every method: the proxy answers a wrong one itself, in JSON (gateway.http.paths).
            Route("/v1/{path:path}", gate),
        ],
        lifespan=lambda app: lifespan(rt, gate, ops, stop, started),
        exception_handlers={HTTPException: http_exception},  # a wrong method: JSON, too
    )

    async def unknown_path(scope: Scope, receive: Receive, send: Send) -> None:
        # Answered as the proxy answers: with its access line, counted (404, region "-").
        if scope["type"] == "http":
            await proxy.refuse(scope, send, unknown_public(scope["path"]))
        else:  # a WebSocket (Starlette answers lifespan itself): refused, HTTP 403 on most
            await send({"type": "websocket.close", "code": 1008})  # servers, not a 500

    app.router.default = unknown_path
    app.check_framing = s.engine != "uvicorn"  # gateway.h1 checks its own
    # Starlette would answer "/v1" or "/healthz/" with a 307 to a Location built from the
    # request's Host (any client's to choose): a JSON 404 instead, as any other unknown path.
    app.router.redirect_slashes = False
    return app


@contextlib.asynccontextmanager
async def lifespan(
    rt: Runtime,
    gate: StreamGate,
    ops: OpsListener | None,
    stop: Callable[[], None] | None,
    started: Callable[[], None] | None = None,
) -> AsyncIterator[None]:
    config = rt.config
    loop = asyncio.get_running_loop()
    rt.loop, rt.loop_thread = loop, threading.get_ident()
    rt.session = Client(config.timeouts.connect_s)
    rt.metrics.pool_idle.set_function(rt.session.idle_count)  # read at each scrape
    await first_look(rt)
    await rt.store.start()
    tasks = [*start_watchers(rt), asyncio.create_task(flush_access_log())]
    if stop is not None:
        # Replaces the server's own SIGTERM handler in this worker, which would stop accepting
        # at once: a load balancer would see a dead target instead of a draining one.
        loop.add_signal_handler(
            signal.SIGTERM, gate.on_sigterm, config.server.drain_timeout_s, stop
        )
    if started is not None:
        started()
    if ops is not None:
        await ops.start()
    log.info(
        "gateway region=%s origin=%s upstreams=%d geoip=%s",
        config.gateway.region,
        config.gateway.origin,
        # The file's: a fleet's document is adopted later, by the store's task, and logged
        # then (config-applied; config-file-ignored where it differs from this file).
        len(config.upstreams),
        config.geoip.database or "none (default location)",
    )
    freeze_heap()
    try:
        yield
    finally:
        gc.unfreeze()  # what was frozen may be collected again once the worker stops serving
        rt.draining = True
        rt.loop = None
        if ops is not None:
            await ops.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rt.store.stop()
        await rt.session.close()
        for handler in access_log.handlers:
            handler.flush()


def freeze_heap() -> None:
    """Move everything the start-up made (config, GeoIP reader, routing tables, modules: tens
    of thousands of objects) out of the garbage collector's sight. Python's oldest-generation
    collection otherwise walks all of it again and again, though none of it is garbage: a
    16-token stream's Python in process 0.93x with it (bench/whole_path.py --tree, round
    seven's whole_path_freeze). What the requests make is still collected as before. The price:
    a start-up object that later becomes cyclic garbage (something a reload replaces) waits for
    the lifespan's end to be collected, and freeze and unfreeze act on the whole process, so
    two lifespans overlapping in one process (tests only) unfreeze each other's heap early,
    which costs speed, not correctness."""
    gc.collect()
    gc.freeze()


async def flush_access_log() -> None:
    """Write the access log's batched lines (gateway.logs.BatchingStreamHandler) at the first
    of the worker's ticks (gateway.ticks) at least ACCESS_LOG_FLUSH_S after a batch's first
    line, with the other background work, so a quiet gateway's lines still reach the log
    soon. With no line waiting the task waits for one and never wakes: a timer every
    ACCESS_LOG_FLUSH_S cost an idle worker about 1 ms of CPU a second (bench/idle_cpu.py)."""
    batch = asyncio.Event()
    # Thread-safe: a line may be logged off the loop's thread (a library's own thread).
    loop, offset = asyncio.get_running_loop(), phase()
    wake = functools.partial(loop.call_soon_threadsafe, batch.set)
    handlers = [h for h in access_log.handlers if isinstance(h, BatchingStreamHandler)]
    for h in handlers:
        h.on_batch.append(wake)
    try:
        while True:
            await batch.wait()
            now = loop.time()
            await asyncio.sleep(next_tick(now + d.ACCESS_LOG_FLUSH_S, offset=offset) - now)
            batch.clear()  # before the flush: a line after it starts the next batch
            for handler in access_log.handlers:
                handler.flush()
    finally:
        for h in handlers:
            h.on_batch.remove(wake)  # this loop is ending: no call into it from a later line
