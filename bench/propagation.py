#!/usr/bin/env python3
"""Fleet config propagation: a weight change made on one gateway, until all three route by it.

Starts redis-server and three gateway processes (shared state in Redis), then 100 times:
PATCH a weight through gateway 0's admin API, and poll all three gateways' /routing-table
until each reports the new config version. Writes bench/results/propagation.{md,json}.
Target: p99 under 1 s.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cli.procs import free_port, geogate_cmd, regions_toml, spawn, stop, wait_http  # noqa: E402
from tests.support import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CHANGES = 100
TOKEN = "bench"
POLL_S = 0.002


def conf(port: int, ops_port: int, redis_port: int, gid: str) -> str:
    return f"""
[gateway]
region = "eu-central"
[server]
port = {port}
access_log = false
[redis]
url = "redis://127.0.0.1:{redis_port}"
gateway_id = "{gid}"
# Its changes come within seconds of the run's Redis start: no wait after it.
restart_grace_s = 0
[admin]
token = "{TOKEN}"
[ops]
port = {ops_port}
{regions_toml("eu-central")}
[[upstreams]]
id = "a"
region = "eu-central"
url = "http://127.0.0.1:{free_port()}"
models = ["m"]
"""


async def until_version(s: aiohttp.ClientSession, url: str, version: int) -> float:
    while True:
        async with s.get(f"{url}/routing-table") as r:
            if (await r.json())["version"] >= version:
                return time.perf_counter()
        await asyncio.sleep(POLL_S)


async def measure(urls: list[str]) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for i in range(CHANGES):
            t0 = time.perf_counter()
            async with s.patch(
                f"{urls[0]}/admin/upstreams/a", headers=headers, json={"weight": 1 + i % 5}
            ) as r:
                version = (await r.json())["version"]
            done = await asyncio.gather(*(until_version(s, u, version) for u in urls))
            out.append((max(done) - t0) * 1000)
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="geogate-propagation-"))
    redis = RedisServer(free_port(), work / "redis.log")
    redis.start()
    procs = []
    try:
        urls = []
        for i in range(3):
            port, ops_port = free_port(), free_port()
            cfg = work / f"gw{i}.toml"
            cfg.write_text(conf(port, ops_port, redis.port, f"gw{i}"))
            procs.append(spawn(geogate_cmd("gateway", "--config", str(cfg)), work / f"gw{i}.log"))
            # The routing table and the admin API are on the ops listener.
            urls.append(f"http://127.0.0.1:{ops_port}")
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=procs[-1])
        ms = asyncio.run(measure(urls))
    finally:
        for p in procs:
            stop(p)
        redis.stop()
    ms.sort()
    p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    lines = [
        "# Fleet config propagation",
        "",
        f"{platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. {CHANGES} weight changes on gateway 0 of 3; time "
        "until all three report the new version (includes the admin call and polling "
        f"every {POLL_S * 1000:g} ms).",
        "",
        "| p50 ms | p99 ms | max ms | mean ms |",
        "|---|---|---|---|",
        f"| {p50:.1f} | {p99:.1f} | {ms[-1]:.1f} | {statistics.mean(ms):.1f} |",
        "",
        f"Target p99 < 1000 ms: {'met' if p99 < 1000 else 'MISSED'}.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "propagation.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "propagation.json").write_text(
        json.dumps({"p50_ms": p50, "p99_ms": p99, "max_ms": ms[-1], "samples_ms": ms}, indent=2)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
