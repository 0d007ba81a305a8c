"""The gateway's ASGI app: the proxy plus the gateway's own endpoints, and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.admin import admin_routes
from gateway.asgi import Receive, Scope, Send, send_error
from gateway.config import ENV_CONFIG_FILE, Config, load_config
from gateway.discovery import discover_once, discovery_loop
from gateway.errors import ConfigError, GatewayError, ModelNotFound, RouteNotFound
from gateway.load_poller import load_loop
from gateway.prober import probe_all, probe_loop
from gateway.proxy import Proxy
from gateway.redis_store import RedisStateStore
from gateway.router import RequestFacts, UpstreamView, route
from gateway.runtime import Runtime, log, setup_logging
from gateway.state import MemoryStateStore, StateStore
from geodb.errors import DatabaseError
from geodb.location import Location, LocationSource
from geodb.reader import DefaultSource, GeoIPSource, GeoSource

# aiohttp pool: no overall cap (the gateway's own concurrency is the bound), idle connections
# kept 60 s so a quiet backend still finds a warm one (probes every 2 s also keep one alive).
POOL_KEEPALIVE_S = 60.0
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def default_location(config: Config) -> Location:
    d = config.geoip.default
    return Location(
        d.latitude, d.longitude, d.country, d.continent, None, None, LocationSource.DEFAULT
    )


def open_geo(config: Config) -> GeoSource:
    if config.geoip.database is None:
        return DefaultSource(default_location(config))
    try:
        return GeoIPSource(config.geoip.database, default_location(config))
    except DatabaseError as exc:
        raise ConfigError(f"config error: geoip.database: {exc}") from None


def build_runtime(config: Config) -> Runtime:
    store: StateStore = RedisStateStore(config) if config.redis.url else MemoryStateStore(config)
    return Runtime.build(config, store, open_geo(config))


async def _geoip_reload_loop(rt: Runtime) -> None:
    geo = rt.geo
    if not isinstance(geo, GeoIPSource):
        return
    while True:
        await asyncio.sleep(rt.config.geoip.reload_interval_s)
        # Reading a 70 MB City file would stall the event loop: do it on a thread.
        changed = await asyncio.to_thread(geo.maybe_reload)
        if changed:
            rt.metrics.geoip_reloads.labels("ok").inc()


def _json_error(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(config: Config | None = None) -> Starlette:
    """The app; with no config, read the file named by $GEOGATE_CONFIG (how worker processes
    of the ASGI server get it)."""
    if config is None:
        setup_logging()
        config = load_config(Path(os.environ[ENV_CONFIG_FILE]))
    rt = build_runtime(config)
    proxy = Proxy(rt)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        t = config.timeouts
        rt.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s),
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            skip_auto_headers=NO_AUTO_HEADERS,
        )
        # Resolve discovery names, then one probe round, before serving: the first requests
        # route on a real pool and real health.
        await discover_once(rt)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.health.timeout_s + 0.5):
                await probe_all(rt)
        await rt.store.start()
        tasks = [
            asyncio.create_task(probe_loop(rt, random.Random())),
            asyncio.create_task(_geoip_reload_loop(rt)),
            asyncio.create_task(load_loop(rt)),
            asyncio.create_task(discovery_loop(rt)),
        ]
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

    def healthy_upstreams() -> list[UpstreamView]:
        snap = rt.store.snapshot(time.monotonic())
        return [u for u in snap.upstreams if u.healthy and not u.drained]

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if rt.draining:
            return PlainTextResponse("draining", status_code=503)
        n = len(healthy_upstreams())
        if n == 0:
            return PlainTextResponse("not ready: no healthy upstream", status_code=503)
        stale = rt.store.stale_since
        if stale is not None:
            # Still serving on the last snapshot: ready, but say so.
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stale))
            return PlainTextResponse(
                f"degraded: shared state stale since {since}; "
                f"routing on the last snapshot ({n} healthy upstream(s))"
            )
        return PlainTextResponse(f"ready: {n} healthy upstream(s)")

    def model_list() -> list[str]:
        return sorted({m for u in healthy_upstreams() for m in u.models})

    async def models(request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "geogate"} for m in model_list()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model_one(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in model_list():
            return _json_error(
                ModelNotFound(
                    f"model {name!r} is not served by any healthy upstream; "
                    "GET /v1/models lists the models available"
                )
            )
        return JSONResponse({"id": name, "object": "model", "created": 0, "owned_by": "geogate"})

    async def metrics(request: Request) -> Response:
        stale = rt.store.stale_since
        rt.metrics.state_stale.set(0 if stale is None else time.time() - stale)
        rt.metrics.config_version.set(rt.store.version)
        in_flight = rt.store.in_flight()
        for u in rt.store.upstreams():
            rt.metrics.in_flight.labels(u.id, u.region).set(in_flight.get(u.id, 0))
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def routing_table(request: Request) -> Response:
        now = time.monotonic()
        snap = rt.store.snapshot(now)
        regions = []
        for r in rt.config.regions:
            ups = [u for u in snap.upstreams if u.region == r.id]
            regions.append(
                {
                    "id": r.id,
                    "name": r.name,
                    "latitude": r.latitude,
                    "longitude": r.longitude,
                    "healthy": any(u.healthy and not u.drained for u in ups),
                    "upstreams": [
                        {
                            "id": u.id,
                            "healthy": u.healthy,
                            "drained": u.drained,
                            "weight": u.weight,
                            "rtt_ms": None if u.rtt_ms is None else round(u.rtt_ms, 2),
                            "models": sorted(u.models),
                            "in_flight": snap.in_flight.get(u.id, 0),
                            "queue_depth": u.queue_depth,
                            "kv_usage": ls.kv_usage if (ls := rt.store.load(u.id)) else None,
                            "ttft_ms": None if u.ttft_ms is None else round(u.ttft_ms, 1),
                            "last_error": rt.store.health(u.id).last_probe_error,
                            # who saw what: each fresh gateway's verdict (fleet mode)
                            "seen_by": rt.store.observations.get(u.id, {}),
                            "fleet_down": u.id in rt.store.fleet_down,
                        }
                        for u in ups
                    ],
                }
            )
        return JSONResponse(
            {
                "self_region": config.gateway.region,
                "origin": config.gateway.origin,
                "version": rt.store.version,
                "shared_state": "local"
                if not rt.config.redis.url
                else ("stale" if rt.store.stale_since is not None else "fresh"),
                "regions": regions,
            }
        )

    async def explain(request: Request) -> Response:
        model = request.query_params.get("model", "")
        ip_text = request.query_params.get("ip") or (request.client.host if request.client else "")
        try:
            ip = ipaddress.ip_address(ip_text) if ip_text else None
        except ValueError:
            return _json_error(RouteNotFound(f"ip {ip_text!r} is not an IP address"))
        loc = rt.geo.locate(ip)
        decision = route(
            RequestFacts(model, loc), rt.store.snapshot(time.monotonic()), rt.policy, rt.rng
        )
        return JSONResponse(
            {
                "model": model,
                "ip": ip_text,
                "location": loc.as_dict(),
                "decision": decision.explain(),
                "header": decision.header(),
            }
        )

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(
            send,
            RouteNotFound(
                f"{scope['path']} is not an endpoint of this gateway; the API is under /v1/"
            ),
        )

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/routing-table", routing_table),
            Route("/explain", explain),
            *admin_routes(rt),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model_one),
            Route("/v1/{path:path}", proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        lifespan=lifespan,
    )
    app.router.default = not_found
    return app
