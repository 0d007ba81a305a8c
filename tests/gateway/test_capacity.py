"""Capacity of one worker (issue 9, "Scale"): past server.max_streams a fast 503 with
Retry-After, never a silent queue; with the default config one worker holds more than the
2,048 connections granian's default backpressure allowed. Larger counts (1,000 to 9,500
streams, against nginx) are bench/streams.py's."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support import (
    Gateway,
    Sim,
    eventually,
    start_fleet,
)

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

STREAM = {
    "model": "m",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
# More than the 2,048 connections one worker took before (granian's backpressure defaulted to
# backlog / workers), few enough for a shared 2-core machine: ~4 descriptors per stream here.
MANY = 2300


def _fleet(tmp: Path, *sim_knobs: str, server_extra: str = "") -> tuple[Gateway, Sim]:
    return start_fleet(tmp, *sim_knobs, server_extra="access_log = false\n" + server_extra)


async def _open_streams(url: str, n: int, tokens: int, within_s: float) -> tuple[int, float]:
    """Open ``n`` streams at once and hold them all until each has its first chunk (or
    ``within_s`` passed): how many got one, and how long the last one took."""
    got = 0
    last = 0.0
    all_in = asyncio.Event()
    release = asyncio.Event()
    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=within_s + 30)

    async def one(s: aiohttp.ClientSession) -> None:
        nonlocal got, last
        body = {**STREAM, "max_tokens": tokens}
        async with s.post(f"{url}/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            await r.content.readany()
            got += 1
            last = time.monotonic() - t0
            if got == n:
                all_in.set()
            await release.wait()  # held open: nobody leaves to make room

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        tasks = [asyncio.create_task(one(s)) for _ in range(n)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), within_s)
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return got, last


def test_one_worker_holds_more_than_2048_streams_with_the_default_config(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the sim inherits it too
    assert hard >= 4 * MANY, f"this test needs {4 * MANY} descriptors; the hard limit is {hard}"
    # Streams of 4 tokens at 0.1 token/s: 30 s each, twice as long as the test waits, so no
    # stream ends to make room for one that waits.
    gw, sim = _fleet(tmp_path, "--tokens-per-s", "0.1")
    try:
        got, last = asyncio.run(_open_streams(gw.url, MANY, tokens=4, within_s=15))
        assert got == MANY, f"{MANY - got} of {MANY} streams never got a first byte"
        print(f"{MANY} concurrent streams, all with a first chunk within {last:.1f} s")
    finally:
        gw.stop()
        sim.proc.kill()


def test_streams_beyond_max_streams_get_a_fast_503_and_the_rest_finish(tmp_path: Path) -> None:
    # 10 tokens at 5/s: 2 s streams; the gateway holds 3.
    # The access log on: the refusal's line is checked.
    gw, sim = start_fleet(tmp_path, "--tokens-per-s", "5", server_extra="max_streams = 3\n")
    try:

        async def scenario() -> tuple[list[bytes], httpx.Response, float]:
            async with httpx.AsyncClient(timeout=30) as c:
                started = asyncio.Event()
                n_started = 0

                async def stream() -> bytes:
                    nonlocal n_started
                    body = {**STREAM, "max_tokens": 10}
                    async with c.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                        assert r.status_code == 200
                        chunks = r.aiter_bytes()
                        out = await anext(chunks)
                        n_started += 1
                        if n_started == 3:
                            started.set()
                        async for b in chunks:
                            out += b
                        return out

                held = [asyncio.create_task(stream()) for _ in range(3)]
                await asyncio.wait_for(started.wait(), 10)
                t0 = time.monotonic()
                over = await c.post(
                    f"{gw.url}/v1/chat/completions", json={**STREAM, "max_tokens": 10}
                )
                took = time.monotonic() - t0
                return list(await asyncio.gather(*held)), over, took

        bodies, over, took = asyncio.run(scenario())
        assert over.status_code == 503, over.text
        assert over.headers["retry-after"] == "1"
        err = over.json()["error"]
        assert err["code"] == "gateway_at_capacity" and "server.max_streams" in err["message"]
        assert took < 0.5, f"the 503 took {took:.2f} s: a queue, not a refusal"
        assert all(b"data: [DONE]" in b for b in bodies)  # the three held streams finished
        # A slot is free again once they are done, and the refusal was counted.
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**STREAM, "stream": False})
        assert r.status_code == 200
        metrics = httpx.get(f"{gw.ops_url}/metrics").text
        assert 'geogate_overload_rejected_total{limit="max_streams"} 1.0' in metrics
        # Refused, and still one access line and one request counted, as every answer.
        assert re.search(r'^geogate_requests_total\{code="503",region="-"\} 1\.0$', metrics, re.M)
        rid = over.headers["x-request-id"]
        eventually(lambda: rid in gw.log_text(), what="the refused request's access line")
        assert "geogate_max_streams 3.0" in metrics
        eventually(
            lambda: "geogate_requests_in_flight 0.0" in httpx.get(f"{gw.ops_url}/metrics").text,
            what="no request in flight",
        )
    finally:
        gw.stop()
        sim.proc.kill()
