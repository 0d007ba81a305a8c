"""The gateway's ASGI app: the proxy plus the gateway's own endpoints, and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.client import new_session
from gateway.config import ENV_CONFIG_FILE, Config, load_config
from gateway.http.admin import admin_routes
from gateway.http.endpoints import Endpoints, not_found
from gateway.http.intake import Proxy
from gateway.runtime import Runtime, build_runtime, log, setup_logging
from gateway.watch import first_look, start_watchers


def create_app(config: Config | None = None) -> Starlette:
    """The app; with no config, read the file named by $GEOGATE_CONFIG (how worker processes
    of the ASGI server get it)."""
    if config is None:
        setup_logging()
        config = load_config(Path(os.environ[ENV_CONFIG_FILE]))
    rt = build_runtime(config)
    app = Starlette(
        routes=[
            *Endpoints(rt).routes(),
            *admin_routes(rt),
            Route("/v1/{path:path}", Proxy(rt), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        lifespan=lambda app: lifespan(rt),
    )
    app.router.default = not_found
    return app


@contextlib.asynccontextmanager
async def lifespan(rt: Runtime) -> AsyncIterator[None]:
    config = rt.config
    rt.session = new_session(config.timeouts.connect_s)
    await first_look(rt)
    await rt.store.start()
    tasks = start_watchers(rt)
    log.info(
        "gateway region=%s origin=%s upstreams=%d geoip=%s",
        config.gateway.region,
        config.gateway.origin,
        len(config.upstreams),
        config.geoip.database or "none (default location)",
    )
    try:
        yield
    finally:
        rt.draining = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rt.store.stop()
        await rt.session.close()
