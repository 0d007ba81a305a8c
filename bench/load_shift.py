#!/usr/bin/env python3
"""Load-aware routing: two near-equal backends, then one slowed; the traffic share moves.

Two simulated backends in one region (TTFT 10 ms each) behind one gateway polling their
/metrics every 250 ms (the default). Load runs at concurrency 8 for 8 s; at 3 s backend b's
TTFT is raised to 200 ms through the sim's runtime knob. Prints and writes the share of
requests each backend served in every 0.5 s window. bench/results/load_shift.{md,json}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cli.procs import free_port, geogate_cmd, regions_toml, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DURATION_S, SLOW_AT_S, WINDOW_S, CONCURRENCY = 8.0, 3.0, 0.5, 8
BODY = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


async def run(gw: str, slow_url: str) -> dict[int, dict[str, int]]:
    windows: dict[int, dict[str, int]] = defaultdict(lambda: {"a": 0, "b": 0})
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            while (now := time.perf_counter() - t0) < DURATION_S:
                async with s.post(f"{gw}/v1/chat/completions", json=BODY) as r:
                    await r.read()
                    who = r.headers["geogate-route"].split("upstream=")[1].split(";")[0]
                windows[int(now / WINDOW_S)][who] += 1

        async def slow_down() -> None:
            await asyncio.sleep(SLOW_AT_S)
            async with s.post(f"{slow_url}/sim/config", json={"ttft_ms": 200}) as r:
                await r.read()

        await asyncio.gather(slow_down(), *(worker() for _ in range(CONCURRENCY)))
    return dict(windows)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="geogate-load-shift-"))
    ports = {n: free_port() for n in ("a", "b")}
    procs = [
        spawn(
            geogate_cmd(
                "sim-backend", "--port", str(p), "--model", "m", "--ttft-ms", "10", "--name", n
            ),
            work / f"{n}.log",
        )
        for n, p in ports.items()
    ]
    gw_port = free_port()
    ups = "".join(
        f'[[upstreams]]\nid = "{n}"\nregion = "eu-central"\n'
        f'url = "http://127.0.0.1:{p}"\nmodels = ["m"]\n'
        for n, p in ports.items()
    )
    cfg = work / "gw.toml"
    cfg.write_text(
        f'[gateway]\nregion = "eu-central"\n[server]\nport = {gw_port}\n'
        f"access_log = false\n[ops]\nport = {free_port()}\n{regions_toml('eu-central')}{ups}"
    )
    try:
        for p in ports.values():
            wait_http(f"http://127.0.0.1:{p}/health")
        procs.append(spawn(geogate_cmd("gateway", "--config", str(cfg)), work / "gw.log"))
        wait_http(f"http://127.0.0.1:{gw_port}/readyz", proc=procs[-1])
        windows = asyncio.run(run(f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{ports['b']}"))
    finally:
        for proc in procs:
            stop(proc)
    lines = [
        "# Load-aware routing: traffic share when a backend slows down",
        "",
        f"Two backends, TTFT 10 ms; at t = {SLOW_AT_S:g} s backend b's TTFT becomes "
        f"200 ms. Concurrency {CONCURRENCY}; load polled every 250 ms.",
        "",
        "| window (s) | requests | share a | share b |",
        "|---|---|---|---|",
    ]
    rows = []
    for w in sorted(windows):
        a, b = windows[w]["a"], windows[w]["b"]
        rows.append({"from_s": w * WINDOW_S, "a": a, "b": b})
        lines.append(
            f"| {w * WINDOW_S:.1f}-{(w + 1) * WINDOW_S:.1f} | {a + b} | "
            f"{a / (a + b):.0%} | {b / (a + b):.0%} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_shift.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "load_shift.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
