#!/usr/bin/env python3
"""Where geogate's memory per open stream goes (issue 14: goal <= 25 KB at 10,000 streams).

One gateway worker (default config) holds --streams open SSE streams: the backend (geogate
sim-backend) sends the role chunk at once and then one token every 1 / --tokens-per-s seconds,
so every stream is open and idle while it is measured. Two runs, both measured from outside:
  plain   the gateway as shipped: the worker's /proc/PID/smaps_rollup (Rss, Anonymous) and
          VmRSS idle (after a warm-up) and with the streams held; per stream = delta / streams
  traced  the same gateway started with Python's own tracemalloc (PYTHONTRACEMALLOC) and a
          sitecustomize.py, written into this run's work directory and put on PYTHONPATH,
          that on SIGUSR1 writes a tracemalloc snapshot and a histogram of live objects by
          type (gc.get_objects). The idle and loaded snapshots give the Python heap per stream
          by file, by line and by object type. Nothing in the gateway knows about it.
Native per stream ~ plain RSS per stream - traced Python heap per stream (the server's native
state, allocators).
--target floor-asgi / floor-rsgi measures bench/floor_proxy.py instead: the stack's own share.

Writes bench/results/stream_memory.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/stream_memory.py [--streams 1000] [--target T] [--prompt-bytes B]
     [--gateway-set server.engine='"granian"']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL  # noqa: E402
from bench.peers import start_floor  # noqa: E402
from bench.proc_cpu import process_tree  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from bench.streams import gateway_config, raise_nofile  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WARMUP = 50  # streams run to the end before the idle reading: pools, imports, caches
SETTLE_S = 2.0  # after the streams are open (or closed), before reading
TOP = 15
FRAMES = 10  # traceback depth: deep enough to reach the gateway frame that asked
BATCH = 100  # streams opened at a time
BATCH_TIMEOUT_S = 60.0  # for a batch to open: a proxy that holds no more gives up here

SITECUSTOMIZE = '''
"""bench/stream_memory.py's probe: on SIGUSR1 write a tracemalloc snapshot and a histogram of
live objects by type to $STREAM_MEMORY_DUMP.<pid>.<k> (k counts the dumps)."""
import collections, gc, json, os, signal, tracemalloc
_k = [0]
def _dump(signum, frame):
    prefix = "%s.%d.%d" % (os.environ["STREAM_MEMORY_DUMP"], os.getpid(), _k[0])
    _k[0] += 1
    gc.collect()
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    tracemalloc.take_snapshot().dump(prefix + ".snap")
    with open(prefix + ".types.json", "w") as f:
        json.dump(dict(types), f)
    open(prefix + ".done", "w").close()
if os.environ.get("STREAM_MEMORY_DUMP") and tracemalloc.is_tracing():
    signal.signal(signal.SIGUSR1, _dump)
'''


def smaps(pid: int) -> dict[str, int]:
    """KiB per field of /proc/PID/smaps_rollup, plus VmRSS."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["VmRSS"] = int(line.split()[1])
    return out


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes, opened: Any) -> None:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        await r.content.readany()  # the role chunk: the stream is set up end to end
        opened()
        while await r.content.readany():
            pass


async def hold(url: str, body: bytes, n: int, on_idle: Any, on_open: Any) -> None:
    """Warm up (WARMUP short streams to the end), call on_idle(); open n streams, call
    on_open() once all are open; then close them all. The callbacks block (they read /proc or
    wait for a snapshot), so they run in a thread while the loop keeps the streams read."""
    count = 0

    def opened() -> None:
        nonlocal count
        count += 1

    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as s:
        short = json.loads(body)
        short["max_tokens"] = 1
        warm = json.dumps(short).encode()
        await asyncio.gather(*(_stream(s, url, warm, lambda: None) for _ in range(WARMUP)))
        await asyncio.sleep(SETTLE_S)
        await loop.run_in_executor(None, on_idle)
        tasks: list[asyncio.Task[None]] = []
        while len(tasks) < n:
            # In batches: a traced gateway is slow, and 2,000 opens at once would run into
            # its own upstream timeouts (504), which is not what this measures.
            more = min(BATCH, n - len(tasks))
            tasks += [asyncio.create_task(_stream(s, url, body, opened)) for _ in range(more)]
            deadline = loop.time() + BATCH_TIMEOUT_S
            while count < len(tasks):
                if loop.time() > deadline:
                    raise SystemExit(
                        f"bench: only {count} of {len(tasks)} streams opened in "
                        f"{BATCH_TIMEOUT_S:g} s (the proxy's connection cap?)"
                    )
                await asyncio.sleep(0.05)
                bad = next((t for t in tasks if t.done()), None)
                if bad is not None:
                    raise SystemExit(f"bench: a stream ended early: {bad.exception()!r}")
        await asyncio.sleep(SETTLE_S)
        await loop.run_in_executor(None, on_open)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def dump(pid: int, prefix: Path, k: int) -> tuple[tracemalloc.Snapshot, dict[str, int]]:
    os.kill(pid, signal.SIGUSR1)
    base = f"{prefix}.{pid}.{k}"
    deadline = time.monotonic() + 120
    while not Path(base + ".done").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: worker {pid} wrote no snapshot (is tracemalloc on?)")
        time.sleep(0.2)
    types = json.loads(Path(base + ".types.json").read_text())
    return tracemalloc.Snapshot.load(base + ".snap"), types


def gateway_frame(tb: tracemalloc.Traceback) -> str:
    """The innermost frame in geogate's own code (gateway/, geodb/): who asked for it."""
    for frame in reversed(tb):  # oldest first since Python 3.7
        rel = frame.filename.replace(str(ROOT) + "/", "")
        if rel.startswith(("gateway/", "geodb/")):
            return f"{rel}:{frame.lineno}"
    return "(no geogate frame)"


def by_gateway_frame(idle: tracemalloc.Snapshot, loaded: tracemalloc.Snapshot) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for sign, snap in ((-1, idle), (1, loaded)):
        for tr in snap.traces:
            key = gateway_frame(tr.traceback)
            sizes[key] = sizes.get(key, 0) + sign * tr.size
    return sizes


def short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def analyse(
    idle: tuple[tracemalloc.Snapshot, dict[str, int]],
    loaded: tuple[tracemalloc.Snapshot, dict[str, int]],
    n: int,
) -> dict[str, Any]:
    keep = [tracemalloc.Filter(False, "*sitecustomize.py"), tracemalloc.Filter(False, "<*")]
    a, b = idle[0].filter_traces(keep), loaded[0].filter_traces(keep)
    files = b.compare_to(a, "filename")
    lines = b.compare_to(a, "lineno")
    ours = by_gateway_frame(a, b)
    types = {t: loaded[1].get(t, 0) - idle[1].get(t, 0) for t in loaded[1]}

    return {
        "python_heap_b_per_stream": sum(s.size_diff for s in files) / n,
        "by_file": [(short(s.traceback[0].filename), s.size_diff / n) for s in files[:TOP]],
        "by_line": [
            (short(s.traceback[0].filename) + f":{s.traceback[0].lineno}", s.size_diff / n)
            for s in lines[:TOP]
        ],
        "by_geogate_frame": _largest(ours, n, TOP),
        "objects_per_stream": _largest(types, n, 20),
    }


def _largest(d: dict[str, int], n: int, k: int) -> list[tuple[str, float]]:
    return sorted(((key, v / n) for key, v in d.items() if v > 0), key=lambda kv: -kv[1])[:k]


def start(
    work: Path, port: int, backend: int, traced: bool, target: str, sets: list[str]
) -> subprocess.Popen[bytes]:
    """geogate (default config), or a floor proxy of bench/floor_proxy.py (its server and
    gateway.client, nothing else): geogate minus the floor is what geogate's own code holds
    per stream."""
    env: dict[str, str] = {}
    if traced:
        (work / "probe").mkdir(exist_ok=True)
        (work / "probe" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(work / "probe"), os.environ.get("PYTHONPATH")])
        )
        env["PYTHONTRACEMALLOC"] = str(FRAMES)  # Python's own switch: trace from the start
        env["STREAM_MEMORY_DUMP"] = str(work / "dump")
    # spawn() passes this process's environment on; patch.dict puts it back afterwards
    with patch.dict(os.environ, env):
        if target == "geogate":
            # the default config (log + GeoIP on), plus any --gateway-set
            conf = gateway_config(work, port, backend, sets)
            cmd = geogate_cmd("gateway", "--config", str(conf))
            p = spawn(cmd, work / f"geogate-{'traced' if traced else 'plain'}.log")
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=p, timeout=60)
        else:
            p = start_floor(work, target, backend, port, [])
            wait_http(f"http://127.0.0.1:{port}/health", proc=p, timeout=60, ok=(200, 404))
    return p


def run(work: Path, args: argparse.Namespace, backend: int, traced: bool) -> dict[str, Any]:
    port = free_port()
    p = start(work, port, backend, traced, args.target, args.gateway_set)
    try:
        tree = process_tree(p.pid)
        if len(tree) > 2:
            raise SystemExit(f"bench: expected one worker, found {len(tree) - 1}")
        # granian: a supervising parent and one worker; uvicorn with one worker: one process.
        worker = tree[-1]
        msgs = [{"role": "user", "content": "x" * args.prompt_bytes or "hi"}]
        doc = {"model": MODEL, "stream": True, "max_tokens": 100000, "messages": msgs}
        body = json.dumps(doc).encode()
        got: dict[str, Any] = {}

        def reading(key: str) -> Any:
            def read() -> None:
                got[key] = dump(worker, work / "dump", len(got)) if traced else smaps(worker)

            return read

        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(hold(url, body, args.streams, reading("idle"), reading("loaded")))
    finally:
        stop(p)
    if traced:
        return analyse(got["idle"], got["loaded"], args.streams)
    return {
        "idle_kib": got["idle"],
        "loaded_kib": got["loaded"],
        "per_stream_b": {
            k: (got["loaded"][k] - got["idle"][k]) * 1024 / args.streams
            for k in ("VmRSS", "Rss", "Anonymous", "Private_Dirty")
        },
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    # 1,000: a floor proxy on granian's defaults holds about 1,024 connections (backpressure).
    ap.add_argument("--streams", type=int, default=1000, help="open streams to hold")
    ap.add_argument("--tokens-per-s", type=float, default=0.2, help="backend pacing")
    ap.add_argument("--no-traced", action="store_true", help="the plain run only")
    ap.add_argument(
        "--target",
        default="geogate",
        choices=("geogate", "floor-asgi", "floor-rsgi", "floor-uvicorn"),
        help="the proxy measured (floors: bench/floor_proxy.py)",
    )
    ap.add_argument(
        "--prompt-bytes",
        type=int,
        default=0,
        help="request body size: a user message of this many bytes (0: 'hi', ~100 B bodies)",
    )
    ap.add_argument(
        "--gateway-set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="geogate only: a config key over the default (TOML value), e.g. "
        "server.engine='\"granian\"'",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "stream_memory", help="path prefix")
    args = ap.parse_args()
    if args.streams < 1 or args.tokens_per_s <= 0:
        ap.error("--streams and --tokens-per-s must be positive")
    return args


def main() -> None:
    args = parse_args()
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="geogate-stream-memory-"))
    print(f"stream memory: {args.streams} streams; logs in {work}", flush=True)
    port = free_port()
    sim = geogate_cmd("sim-backend", "--port", str(port), "--model", MODEL, "--ttft-ms", "0")
    sim += ["--tokens-per-s", f"{args.tokens_per_s:g}"]
    backend = spawn(sim, work / "sim.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=backend)
        plain = run(work, args, port, traced=False)
        print(f"plain: {plain['per_stream_b']}", flush=True)
        traced = None if args.no_traced else run(work, args, port, traced=True)
    finally:
        stop(backend)
    write(args, plain, traced)


def _kb(b: float) -> str:
    return f"{b / 1024:.1f}"


def write(args: argparse.Namespace, plain: dict[str, Any], traced: dict[str, Any] | None) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    n = args.streams
    ps = plain["per_stream_b"]
    lines = [
        "# Memory per open stream: where it goes",
        "",
        f"Machine: {machine}. Command: `.venv/bin/python bench/stream_memory.py --streams {n}"
        + (f" --prompt-bytes {args.prompt_bytes}" if args.prompt_bytes else "")
        + (" --no-traced" if args.no_traced else "")
        + (f" --target {args.target}" if args.target != "geogate" else "")
        + "".join(f" --gateway-set {item}" for item in args.gateway_set)
        + "`. One worker, "
        + (
            "geogate default config (access log + GeoIP on"
            + "".join(f"; {item}" for item in args.gateway_set)
            + ")"
            if args.target == "geogate"
            else f"{args.target} (bench/floor_proxy.py: its server + gateway.client, nothing else)"
        )
        + f", holding {n} open SSE streams (sim-backend paced at {args.tokens_per_s:g} "
        "tokens/s, so they are open and idle while read). KiB = 1024 bytes.",
        "",
        "| the worker's memory (/proc, plain run) | idle KiB | with streams KiB | KiB/stream |",
        "|---|---|---|---|",
    ]
    for k in ("VmRSS", "Rss", "Anonymous", "Private_Dirty"):
        lines.append(f"| {k} | {plain['idle_kib'][k]} | {plain['loaded_kib'][k]} | {_kb(ps[k])} |")
    if traced:
        py = traced["python_heap_b_per_stream"]
        lines += [
            "",
            f"Python heap (tracemalloc, traced run, {FRAMES} frames): **{_kb(py)} KiB/stream**; "
            f"native and allocator overhead = RSS/stream - that = **{_kb(ps['Rss'] - py)} "
            "KiB/stream** (the server's native connection state and buffers: uvloop's, or "
            "granian's in Rust; malloc arenas and fragmentation, pymalloc pools not yet "
            "returned).",
        ]
        for title, key, unit in (
            ("Python heap per stream by file (where the allocation happened)", "by_file", "B"),
            ("... by line", "by_line", "B"),
            (
                "... by the innermost geogate frame that led to it (what our code asked for)",
                "by_geogate_frame",
                "B",
            ),
            (
                "Live objects per stream, by type (gc.get_objects, loaded - idle)",
                "objects_per_stream",
                "objects",
            ),
        ):
            lines += ["", f"| {title} | {unit}/stream |", "|---|---|"]
            lines += [f"| `{k}` | {v:,.{2 if unit == 'objects' else 0}f} |" for k, v in traced[key]]
    write_results(
        args.out,
        lines,
        {
            "machine": machine,
            "streams": n,
            "target": args.target,
            "tokens_per_s": args.tokens_per_s,
            "prompt_bytes": args.prompt_bytes,
            "plain": plain,
            "traced": traced,
        },
    )


if __name__ == "__main__":
    main()
