#!/usr/bin/env python3
"""Which upstream HTTP client: aiohttp (HTTP/1.1) vs httpx (HTTP/1.1) vs httpx (HTTP/2).

Two measurements, same run, same upstream (a geogate gateway's /v1/models: granian serving
HTTP/1.1 and h2c, no upstream calls behind it):
  1. client CPU per request: 3,000 requests at concurrency 16, CPU time of the client process
     divided by requests — what the gateway pays per proxied request for its client;
  2. a cold burst over a cross-region leg: a user-space proxy adds 50 ms each way (100 ms RTT);
     16 concurrent requests on a pool holding one warm connection. HTTP/1.1 must open 15 more
     connections (one RTT each for TCP); HTTP/2 multiplexes them on the warm one.
Writes bench/results/upstream_client.{md,json}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REQUESTS = 3000
CONCURRENCY = 16
ONE_WAY_DELAY_S = 0.05


async def delay_proxy(listen: int, target: int, delay: float) -> asyncio.Server:
    """TCP proxy that delivers every chunk ``delay`` seconds late, in both directions."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await r.read(65536):
                loop.call_later(delay, w.write, data)
            await asyncio.sleep(delay)
        finally:
            w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)  # the SYN's trip: connecting costs a round trip
        ur, uw = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.sleep(delay)  # the SYN-ACK's trip back
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw), return_exceptions=True)

    return await asyncio.start_server(handle, "127.0.0.1", listen)


Get = Callable[[str], Awaitable[None]]


def clients() -> dict[str, tuple[Callable[[], object], Callable[[object], Get]]]:
    def aio() -> object:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    def aio_get(s: object) -> Get:
        async def get(url: str) -> None:
            async with s.get(url) as r:  # type: ignore[attr-defined]
                await r.read()

        return get

    def hx(http2: bool) -> Callable[[], object]:
        return lambda: httpx.AsyncClient(
            http1=not http2, http2=http2, limits=httpx.Limits(max_connections=None)
        )

    def hx_get(s: object) -> Get:
        async def get(url: str) -> None:
            (await s.get(url)).raise_for_status()  # type: ignore[attr-defined]

        return get

    return {
        "aiohttp h1": (aio, aio_get),
        "httpx h1": (hx(False), hx_get),
        "httpx h2": (hx(True), hx_get),
    }


async def close(session: object) -> None:
    if isinstance(session, aiohttp.ClientSession):
        await session.close()
    elif isinstance(session, httpx.AsyncClient):
        await session.aclose()


async def cpu_per_request(
    make: Callable[[], object], getter: Callable[[object], Get], url: str
) -> float:
    session = make()
    get = getter(session)
    await get(url)
    todo = iter(range(REQUESTS))

    async def worker() -> None:
        for _ in todo:
            await get(url)

    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu = time.process_time() - t0
    await close(session)
    return cpu / REQUESTS * 1e6


async def cold_burst(
    make: Callable[[], object], getter: Callable[[object], Get], url: str
) -> dict[str, float]:
    session = make()
    get = getter(session)
    await get(url)  # one warm connection, as the health prober leaves it
    times = []

    async def timed() -> None:
        t0 = time.perf_counter()
        await get(url)
        times.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(timed() for _ in range(CONCURRENCY)))
    await close(session)
    return {"p50_ms": statistics.median(times), "max_ms": max(times)}


async def run(port: int) -> dict[str, dict[str, float]]:
    url = f"http://127.0.0.1:{port}/v1/models"
    proxy_port = free_port()
    server = await delay_proxy(proxy_port, port, ONE_WAY_DELAY_S)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, (make, getter) in clients().items():
            cpu = statistics.median([await cpu_per_request(make, getter, url) for _ in range(3)])
            burst = await cold_burst(make, getter, f"http://127.0.0.1:{proxy_port}/v1/models")
            out[name] = {"cpu_us_per_request": cpu, **burst}
            print(
                f"{name:11} {cpu:7.0f} µs CPU/request   cold burst of {CONCURRENCY} over "
                f"{2 * ONE_WAY_DELAY_S * 1000:.0f} ms RTT: p50 {burst['p50_ms']:.0f} ms, "
                f"max {burst['max_ms']:.0f} ms",
                flush=True,
            )
    finally:
        server.close()
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="geogate-client-bench-"))
    port = free_port()
    cfg = work / "gw.toml"
    cfg.write_text(
        f'[gateway]\nregion = "r"\n[server]\nport = {port}\naccess_log = false\n'
        f"[ops]\nport = {free_port()}\n"
        f'[[regions]]\nid = "r"\nlatitude = 0\nlongitude = 0\n'
        f'[[upstreams]]\nid = "u"\nregion = "r"\nurl = "http://127.0.0.1:{port}"\n'
        f'models = ["m"]\nhealth_path = "/healthz"\n'
    )
    proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), work / "gw.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        results = asyncio.run(run(port))
    finally:
        stop(proc)
    base = results["aiohttp h1"]["cpu_us_per_request"]
    lines = [
        "# Upstream HTTP client",
        "",
        f"{REQUESTS} requests at concurrency {CONCURRENCY} for CPU; cold burst of "
        f"{CONCURRENCY} over a {2 * ONE_WAY_DELAY_S * 1000:.0f} ms RTT user-space proxy "
        "with one warm connection.",
        "",
        "| client | CPU µs/request | vs aiohttp | cold burst p50 ms | cold burst max ms |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['cpu_us_per_request']:.0f} | "
            f"{r['cpu_us_per_request'] / base:.2f} | {r['p50_ms']:.0f} | "
            f"{r['max_ms']:.0f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "upstream_client.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "upstream_client.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
