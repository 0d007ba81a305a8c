"""Kill one of three upstreams while 500 requests run at concurrency 20: zero may fail."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cli.procs import kill
from tests.support import UpstreamSpec, gateway_toml, get_json, start_gateway, start_sim

TOTAL = 500
CONCURRENCY = 20
KILL_AFTER = 100


async def _run(url: str, on_progress: asyncio.Event) -> tuple[Counter[int], Counter[str]]:
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    todo = iter(range(TOTAL))
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            for _ in todo:
                async with s.post(f"{url}/v1/chat/completions", json=body) as r:
                    await r.read()
                    statuses[r.status] += 1
                    route = r.headers.get("geogate-route", "")
                    served[route.split("upstream=")[-1].split(";")[0]] += 1
                if sum(statuses.values()) >= KILL_AFTER:
                    on_progress.set()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, served


def test_kill_one_of_three_under_load_loses_nothing(tmp_path: Path) -> None:
    # Three near-equal upstreams in one region, so all three carry traffic when one dies.
    # Each answer takes ~20 ms, so requests are in flight on the victim when it is killed.
    sims = [
        start_sim(
            tmp_path, f"s{i}", "eu-central", ["m"], "--ttft-ms", "10", "--tokens-per-s", "400"
        )
        for i in range(3)
    ]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    gw = start_gateway(
        tmp_path,
        lambda port: gateway_toml(port, ups).replace("[server]", "[server]\naccess_log = false"),
    )
    try:

        async def scenario() -> tuple[Counter[int], Counter[str]]:
            progress = asyncio.Event()
            load = asyncio.ensure_future(_run(gw.url, progress))
            await progress.wait()
            kill(sims[1].proc)
            return await load

        statuses, served = asyncio.run(scenario())
        assert statuses == Counter({200: TOTAL}), statuses
        assert len(served) == 3 and all(n > 0 for n in served.values()), served
        table = get_json(f"{gw.ops_url}/routing-table")
        regions: list[dict[str, Any]] = table["regions"]  # type: ignore[assignment]
        victim = next(u for r in regions for u in r["upstreams"] if u["id"] == "s1")
        assert victim["healthy"] is False
        # The kill must have been felt: requests to the victim failed over, none was lost.
        metrics = urllib.request.urlopen(f"{gw.ops_url}/metrics").read().decode()
        retries = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("geogate_retries_total")
        )
        assert retries > 0, "no request failed over: the kill happened with nothing in flight"
    finally:
        gw.stop()
        for s in sims:
            kill(s.proc)
