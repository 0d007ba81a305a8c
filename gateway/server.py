"""Run the app on an ASGI server: granian (default) or hypercorn, both on uvloop.

granian was chosen by measurement (bench/overhead.py, README "Performance"): its Rust HTTP
stack speaks HTTP/1.1, h2c with prior knowledge and TLS with ALPN h2, and on SIGTERM it stops
accepting, lets open streams finish and kills a worker that is still busy after the drain
timeout. hypercorn stays as the pure-Python engine for platforms without granian wheels.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
from pathlib import Path

from gateway.config import ENV_CONFIG_FILE, Config


def run_granian(config: Config, config_path: Path) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.server import Server

    s = config.server
    # Workers are separate processes: they load the same file, overrides included.
    os.environ[ENV_CONFIG_FILE] = str(config_path.resolve())
    server = Server(
        "gateway.http.app:create_app",
        address=s.host,
        port=s.port,
        interface=Interfaces.ASGI,
        workers=s.workers,
        loop=Loops.uvloop,
        http=HTTPModes.auto,  # HTTP/1.1, h2c prior knowledge, and ALPN on TLS
        factory=True,
        ssl_cert=s.tls_cert,
        ssl_key=s.tls_key,
        workers_kill_timeout=max(1, math.ceil(s.drain_timeout_s)),
        log_access=False,  # the app writes its own access line, with request id and route
        backlog=2048,
    )
    server.serve()


def run_hypercorn(config: Config) -> None:
    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HConfig

    from gateway.http.app import create_app

    s = config.server
    hc = HConfig()
    hc.bind = [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"]
    hc.graceful_timeout = s.drain_timeout_s
    hc.accesslog = None
    # hypercorn closes a connection after 1000 requests by default; granian does not, and a
    # long-lived multiplexed h2 connection from an edge tier is exactly what we want to keep.
    hc.keep_alive_max_requests = 2**31
    if s.tls_cert and s.tls_key:
        hc.certfile, hc.keyfile = str(s.tls_cert), str(s.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]
    app = create_app(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    uvloop.run(main())


def run(config: Config, config_path: Path) -> None:
    if config.server.engine == "hypercorn":
        run_hypercorn(config)
    else:
        run_granian(config, config_path)
