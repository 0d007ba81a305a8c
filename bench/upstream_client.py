#!/usr/bin/env python3
"""Which upstream HTTP client: aiohttp (the gateway's until issue 14's fourth round) and
gateway.client (its own since: an asyncio protocol with httptools) vs httpx, pyreqwest and
rnet (Rust: reqwest on hyper/Tokio) and pycurl (libcurl), each over HTTP/1.1 and, where it
can, HTTP/2 (h2c prior knowledge). The adapters are in bench/client_adapters.py; pyreqwest,
rnet and pycurl are bench-only (``--install`` puts them into this interpreter's environment
with pip).

Three measurements, same run, clients interleaved round by round (a shared machine drifts):
  1. client CPU per non-streaming request: REQUESTS at concurrency 16 against a geogate
     gateway's /v1/models (granian, HTTP/1.1 and h2c; no upstream call behind it); the client
     process's CPU time (all its threads: the Rust clients' Tokio threads count) / requests;
  2. client CPU per streamed chunk: STREAMS at concurrency 16 against bench/sse_upstream.py
     (granian; 16 SSE events 5 ms apart plus [DONE], each a separate read: a paced stream is
     one wake-up per chunk); CPU / chunks received, and / stream. "first chunk ms" (one
     stream alone) is ~5 ms for a client that hands on each chunk as it comes; one that
     buffers the body shows the whole stream's ~85 ms;
  3. a cold burst over a cross-region leg: a user-space proxy adds 50 ms each way (100 ms
     RTT); 16 concurrent requests on a pool holding one warm connection. HTTP/1.1 must open 15
     more connections (one RTT each for TCP); HTTP/2 multiplexes them on the warm one.

  .venv/bin/python bench/upstream_client.py [--install] [--append] [--clients "aiohttp h1,..."]

Writes bench/results/upstream_client.{md,json}; --append adds this run to the runs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.client_adapters import CLIENTS  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BENCH_ONLY = ("pyreqwest==0.15.1", "rnet==2.4.2", "pycurl==7.49.0")
REQUESTS = 3000
STREAMS = 320
CONCURRENCY = 16
ROUNDS = 3
ONE_WAY_DELAY_S = 0.05
ANALYSIS = "<!-- analysis: kept across runs -->"


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


async def _spread(n: int, one: object) -> float:
    """Run ``one()`` n times at CONCURRENCY; the process CPU seconds it took."""
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await one()  # type: ignore[operator]

    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.process_time() - t0


async def cpu_per_request(name: str, url: str) -> float:
    from bench.client_adapters import CLIENTS

    c = CLIENTS[name]()
    await c.get(url)
    cpu = await _spread(REQUESTS, lambda: c.get(url))
    await c.close()
    return cpu / REQUESTS * 1e6


async def cpu_per_chunk(name: str, url: str) -> dict[str, float]:
    from bench.client_adapters import CLIENTS

    c = CLIENTS[name]()
    await c.stream(url)
    firsts = []
    for _ in range(5):  # alone, so that the first chunk's wait is the server's pace
        t0 = time.perf_counter()
        firsts.append((await c.stream(url))[1] - t0)
    chunks = 0

    async def one() -> None:
        nonlocal chunks
        got, _ = await c.stream(url)  # not ``chunks += await``: it reads chunks before the await
        chunks += got

    cpu = await _spread(STREAMS, one)
    await c.close()
    return {
        "first_chunk_ms": statistics.median(firsts) * 1000,
        "cpu_us_per_chunk": cpu / chunks * 1e6,
        "cpu_us_per_stream": cpu / STREAMS * 1e6,
        "chunks_per_stream": chunks / STREAMS,
    }


async def cold_burst(name: str, url: str) -> dict[str, float]:
    from bench.client_adapters import CLIENTS

    c = CLIENTS[name]()
    await c.get(url)  # one warm connection, as the health prober leaves it
    times = []

    async def timed() -> None:
        t0 = time.perf_counter()
        await c.get(url)
        times.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(timed() for _ in range(CONCURRENCY)))
    await c.close()
    return {"burst_p50_ms": statistics.median(times), "burst_max_ms": max(times)}


async def run(gw: int, sse: int, names: list[str]) -> dict[str, dict[str, float]]:
    models, stream = f"http://127.0.0.1:{gw}/v1/models", f"http://127.0.0.1:{sse}/stream"
    proxy_port = free_port()
    server = await delay_proxy(proxy_port, gw, ONE_WAY_DELAY_S)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    try:
        for r in range(ROUNDS):
            for name in names:
                got = {"cpu_us_per_request": await cpu_per_request(name, models)}
                got |= await cpu_per_chunk(name, stream)
                if r == 0:
                    got |= await cold_burst(name, f"http://127.0.0.1:{proxy_port}/v1/models")
                for k, v in got.items():
                    samples[name].setdefault(k, []).append(v)
                print(
                    f"round {r + 1} {name:13} " + "  ".join(f"{k} {v:.1f}" for k, v in got.items()),
                    flush=True,
                )
    finally:
        server.close()
    return {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}


def install() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *BENCH_ONLY], check=True)


def serve(work: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    port, sse = free_port(), free_port()
    cfg = work / "gw.toml"
    cfg.write_text(
        # granian: the h2c clients need HTTP/2 (uvicorn, the default engine, has none).
        f'[gateway]\nregion = "r"\n[server]\nport = {port}\naccess_log = false\n'
        'engine = "granian"\n'
        f"[ops]\nport = {free_port()}\n"
        f'[[regions]]\nid = "r"\nlatitude = 0\nlongitude = 0\n'
        f'[[upstreams]]\nid = "u"\nregion = "r"\nurl = "http://127.0.0.1:{port}"\n'
        f'models = ["m"]\nhealth_path = "/healthz"\n'
    )
    granian = Path(sys.executable).parent / "granian"
    procs = [
        spawn(geogate_cmd("gateway", "--config", str(cfg)), work / "gw.log"),
        spawn(
            [
                str(granian),
                "--interface",
                "asgi",
                "--http",
                "auto",
                "--loop",
                "uvloop",
                "--host",
                "127.0.0.1",
                "--port",
                str(sse),
                "--workers",
                "1",
                "bench.sse_upstream:app",
            ],
            work / "sse.log",
        ),
    ]
    wait_http(f"http://127.0.0.1:{port}/readyz", proc=procs[0])
    wait_http(f"http://127.0.0.1:{sse}/v1/models", proc=procs[1])
    return procs, port, sse


def table(results: dict[str, dict[str, float]]) -> list[str]:
    base = results["aiohttp h1"]
    lines = [
        "| client | CPU µs/request | vs aiohttp | CPU µs/chunk | vs aiohttp | CPU µs/stream "
        "| vs aiohttp | chunks/stream | first chunk ms | cold burst p50 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['cpu_us_per_request']:.0f} | "
            f"{r['cpu_us_per_request'] / base['cpu_us_per_request']:.2f} | "
            f"{r['cpu_us_per_chunk']:.1f} | "
            f"{r['cpu_us_per_chunk'] / base['cpu_us_per_chunk']:.2f} | "
            f"{r['cpu_us_per_stream']:.0f} | "
            f"{r['cpu_us_per_stream'] / base['cpu_us_per_stream']:.2f} | "
            f"{r['chunks_per_stream']:.1f} | {r.get('first_chunk_ms', float('nan')):.1f} | "
            f"{r['burst_p50_ms']:.0f} | {r['burst_max_ms']:.0f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--install", action="store_true", help=f"pip install {BENCH_ONLY}")
    ap.add_argument("--append", action="store_true", help="add this run to the saved runs")
    ap.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help="comma-separated, aiohttp h1 (the ratios' base) first (default: all of "
        + ", ".join(CLIENTS)
        + ")",
    )
    args = ap.parse_args()
    names = [n.strip() for n in args.clients.split(",")]
    unknown = [n for n in names if n not in CLIENTS]
    if unknown or names[0] != "aiohttp h1":
        ap.error(f"--clients: unknown {unknown}" if unknown else "--clients: start with aiohttp h1")
    if args.install:
        install()
    work = Path(tempfile.mkdtemp(prefix="geogate-client-bench-"))
    os.environ["PYTHONPATH"] = str(ROOT)  # granian imports bench.sse_upstream
    procs, gw, sse = serve(work)
    try:
        # uvloop, as in the gateway's workers (gateway/server.py): the clients' Python side
        # costs what it would cost there.
        results = uvloop.run(run(gw, sse, names))
    finally:
        for p in procs:
            stop(p)
    this: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "results": results,
    }
    path = RESULTS / "upstream_client.json"
    old = json.loads(path.read_text()) if args.append and path.exists() else {}
    runs = [*old.get("runs", []), this] if isinstance(old, dict) else [this]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    lines = [
        "# Upstream HTTP client",
        "",
        f"`.venv/bin/python bench/upstream_client.py`: {REQUESTS} requests at concurrency "
        f"{CONCURRENCY} (CPU/request, geogate /v1/models); {STREAMS} paced SSE streams at "
        f"concurrency {CONCURRENCY} (CPU/chunk, bench/sse_upstream.py: 16 events 5 ms apart + "
        f"[DONE]); medians of {ROUNDS} interleaved rounds, on uvloop; cold burst of "
        f"{CONCURRENCY} over a "
        f"{2 * ONE_WAY_DELAY_S * 1000:.0f} ms RTT user-space proxy with one warm connection. "
        "CPU is the client process's (all threads).",
    ]
    for i, r in enumerate(runs, 1):
        lines += ["", f"## Run {i}: {r['date']}, {r['machine']}", "", *table(r["results"])]
    md = RESULTS / "upstream_client.md"
    # The reading of the numbers (written by hand, below the marker) survives a rerun.
    kept = md.read_text().partition(ANALYSIS)[2] if md.exists() else ""
    lines += ["", ANALYSIS + kept.rstrip("\n")] if kept.strip() else []
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
