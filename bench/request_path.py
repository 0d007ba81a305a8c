#!/usr/bin/env python3
"""CPU per whole proxied request in process, geogate's app against the floor proxy
(bench/floor_proxy.py) on the same event loop and the same upstream client, without a server:
geogate minus floor is the CPU of geogate's own code per request, measured as this process's
CPU time (not wall time), so a busy machine moves it less than a load test. It runs against any
source tree, so a before/after pair comes from one sitting:

  .venv/bin/python bench/request_path.py                  # this tree
  git archive HEAD | tar -x -C /tmp/base && .venv/bin/python bench/request_path.py --tree /tmp/base

The app is driven as an ASGI server would drive it (scope, receive, send), c requests at a time,
against a real sim-backend on loopback (its CPU is not counted): non-streaming (16 tokens, at
once) and streaming (16 SSE events, unpaced: the per-event cost without the wake-ups pacing
adds). The config is bench/overhead.py's default one (access log on, to a file; a GeoIP
database every lookup hits). Rounds alternate geogate and floor; the median is reported.
Writes bench/results/request_path.{md,json} (or --out PREFIX).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "bench-model"
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope_for(body: bytes, port: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", f"127.0.0.1:{port}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"user-agent", b"bench"),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", port),
    }


async def one(app: App, body: bytes, port: int) -> int:
    """One request as a server hands it over; the client stays connected until the end."""
    sent: list[bytes] = []
    status = 0
    delivered = False
    connected = asyncio.Event()  # never set: the client does not leave

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await connected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            sent.append(message.get("body", b""))

    await app(scope_for(body, port), receive, send)
    return status


async def rounds(
    apps: dict[str, App], body: bytes, port: int, n: int, conc: int, reps: int
) -> dict[str, list[float]]:
    """µs of this process's CPU per request, per app, ``reps`` alternating rounds."""
    out: dict[str, list[float]] = {name: [] for name in apps}

    async def batch(app: App, count: int) -> None:
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                status = await one(app, body, port)
                if status != 200:
                    raise SystemExit(f"bench: a request got HTTP {status}")

        await asyncio.gather(*(worker() for _ in range(conc)))

    for app in apps.values():
        await batch(app, n // 5)  # warm: connections pooled, caches filled
    for _ in range(reps):
        for name, app in apps.items():
            t0 = time.process_time()
            await batch(app, n)
            out[name].append((time.process_time() - t0) / n * 1e6)
    return out


async def lifespan_of(app: Any) -> Callable[[], Awaitable[None]]:
    """Run the app's ASGI lifespan startup; returns what runs its shutdown."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()
    await queue.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"].endswith(".failed"):
            raise SystemExit(f"bench: lifespan failed: {message}")

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, queue.get, send)
    )
    await started.wait()

    async def shutdown() -> None:
        await queue.put({"type": "lifespan.shutdown"})
        await task

    return shutdown


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--requests", type=int, default=3000, help="per round")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "request_path")
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(1, str(ROOT))  # bench.floor_proxy and bench.overhead from this tree
    from bench.overhead import gateway_conf
    from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http

    work = Path(tempfile.mkdtemp(prefix="geogate-request-path-"))
    backend = free_port()
    sim = spawn(
        geogate_cmd("sim-backend", "--port", str(backend), "--model", MODEL, "--tokens", "16"),
        work / "sim.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{backend}/health", proc=sim)
        results = run(args, work, backend, gateway_conf)
    finally:
        stop(sim)
    write(args, results)


def run(args: argparse.Namespace, work: Path, backend: int, gateway_conf: Any) -> dict[str, Any]:
    import uvloop

    from bench import floor_proxy
    from gateway.config_file import load_config
    from gateway.http.app import create_app

    os.environ[floor_proxy.UPSTREAM_ENV] = f"http://127.0.0.1:{backend}"
    # No server runs here: any engine will do, and an older tree's gateway_conf needs one named.
    cfg = load_config(gateway_conf(work, 8000, backend, "granian"))
    access = logging.getLogger("geogate.access")
    results: dict[str, Any] = {}

    async def measure() -> None:
        app = create_app(cfg)
        shutdown = await lifespan_of(app)
        # The access log to a file, as in production (not this terminal).
        sink = (work / "access.log").open("w")
        for handler in access.handlers:
            handler.setStream(sink)  # type: ignore[attr-defined]
        apps: dict[str, App] = {"geogate": app, "floor": floor_proxy.asgi}
        for mode, stream in (("non-streaming", False), ("streaming", True)):
            doc = {"model": MODEL, "max_tokens": 16, "stream": stream}
            body = json.dumps({**doc, "messages": [{"role": "user", "content": "hi"}]}).encode()
            got = await rounds(apps, body, 8000, args.requests, args.conc, args.reps)
            results[mode] = {
                name: {"runs_us": v, "median_us": statistics.median(v)} for name, v in got.items()
            }
        await shutdown()
        await floor_proxy.close()
        sink.close()

    uvloop.run(measure())
    return results


def write(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from bench.results_io import write_results

    tree_arg = "" if args.tree.resolve() == ROOT else f" --tree {args.tree}"
    meta = {
        "tree": str(args.tree),
        "requests_per_round": args.requests,
        "concurrency": args.conc,
        "rounds": args.reps,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    lines = [
        "# CPU per proxied request in process: geogate's app vs the floor proxy",
        "",
        f"`.venv/bin/python bench/request_path.py{tree_arg}` ({meta['date']}, {meta['machine']}; "
        f"tree {meta['tree']}). {args.requests} requests per round at concurrency {args.conc}, "
        f"{args.reps} rounds alternating; µs of this process's CPU per request (median of the "
        "rounds, then every round). No server: what the server adds is in "
        "bench/results/overhead.md.",
        "",
        "| mode | geogate µs | floor µs | geogate's own code µs | rounds (geogate / floor) |",
        "|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        g, f = r["geogate"], r["floor"]
        runs = " ".join(f"{x:.0f}" for x in g["runs_us"]) + " / "
        runs += " ".join(f"{x:.0f}" for x in f["runs_us"])
        own = g["median_us"] - f["median_us"]
        lines.append(
            f"| {mode} | {g['median_us']:.0f} | {f['median_us']:.0f} | {own:.0f} | {runs} |"
        )
    write_results(args.out, lines, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
