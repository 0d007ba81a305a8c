#!/usr/bin/env python3
"""New streams per second one core sets up (issue 14: goal >= 3,000), geogate vs nginx.

Every request is a streaming chat completion ("stream": true) whose backend (geogate
sim-backend --tokens 1, no pacing, no TTFT) answers at once with a role chunk, one token, the
finish chunk and [DONE]: what is left to measure is the proxy's cost of setting a stream up and
tearing it down (intake, routing, upstream request, response start, a few body sends, access
log). Two ways to arrive:
  keepalive  HTTP/1.1 keep-alive connections, --conc of them, one stream at a time each
  fresh      a new TCP connection per stream ("Connection: close": the proxy closes it after
             the stream, h2load reconnects), so accept + connection set-up is in the price
The proxy is pinned to CPU 0 (as bench/overhead_cells.pinned); backend and h2load share CPU 1.
Both targets keep a keep-alive pool to the backend, so "fresh" is fresh on the client side only.

Per cell: streams/s h2load saw, the proxy's CPU per stream (utime + stime of its process tree
from /proc around the measured run, bench/proc_cpu.py), how busy its core was, and
1 / (CPU per stream) = the streams/s one fully busy core would set up. Where the proxy's core is
not saturated (the rig's core is), the achieved rate understates the proxy and the CPU figure is
the one to read; the md says which core was the limit.

Writes bench/results/stream_setup.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/stream_setup.py [--duration 3] [--conc 16]
     [--targets geogate,geogate-granian,nginx]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, gateway_conf, nginx_conf  # noqa: E402
from bench.overhead_cells import LOAD_CPU, PROXY_CPU, pinned  # noqa: E402
from bench.proc_cpu import cpu_between, process_tree, read_cpu  # noqa: E402
from bench.results_io import params, write_results  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGETS = ("geogate", "geogate-granian", "nginx")
MODES = ("keepalive", "fresh")
PATH = "/v1/chat/completions"
CALIBRATION_STREAMS = 1000  # also the warm-up: pools filled, caches hot
BUSY = 0.9  # a core this busy is the limit of a cell


@dataclass(frozen=True)
class H2load:
    rps: float
    done: int  # requests h2load sent in the run
    ok: int  # 2xx
    wall_s: float
    rig_cpu_s: float  # h2load's own CPU (the backend's is read from /proc)


def h2load(
    url: str, body: Path, shape: list[str], n: int, cpu: str | None, threads: int = 1
) -> H2load:
    """One count-based h2load run (see bench/overhead_cells for why not -D), pinned to cpu
    (a taskset list; None: not pinned)."""
    args = ["h2load", "-t", str(threads), *shape, "-n", str(n), "-d", str(body)]
    args += ["-H", "content-type: application/json", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = pinned(cpu, args) if cpu else args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if not m or not ok:
        raise SystemExit(f"bench: h2load printed no result for {url}:\n{out}")
    return H2load(float(m.group(1)), n, int(ok.group(1)), wall, cpu_s)


@dataclass
class Cell:
    target: str
    mode: str
    concurrency: int
    streams: int
    ok: int
    streams_per_s: float
    proxy_cpu_us_per_stream: float
    cpu_res_us: float  # that figure's resolution: one clock tick per process / streams
    proxy_core_busy: float  # proxy CPU seconds / wall seconds (1.0 = its core saturated)
    rig_core_busy: float  # (backend + h2load) CPU seconds / wall seconds, on the other core
    streams_per_core_s: float  # 1 / CPU per stream: what one fully busy core sets up


def measure(
    target: str,
    mode: str,
    url: str,
    body: Path,
    conc: int,
    duration: float,
    proxy: list[int],
    backend: list[int],
) -> Cell:
    shape = ["--h1", "-c", str(conc), "-m", "1"]
    if mode == "fresh":
        shape += ["-H", "connection: close"]
    cal = h2load(url, body, shape, CALIBRATION_STREAMS, LOAD_CPU)
    n = max(conc * 20, int(cal.rps * duration))
    p0, b0 = read_cpu(proxy), read_cpu(backend)
    run = h2load(url, body, shape, n, LOAD_CPU)
    cpu, res = cpu_between(p0, read_cpu(proxy))
    rig = cpu_between(b0, read_cpu(backend))[0] + run.rig_cpu_s
    per = cpu / max(1, run.ok)
    return Cell(
        target,
        mode,
        conc,
        n,
        run.ok,
        run.rps,
        per * 1e6,
        res / max(1, run.ok) * 1e6,
        cpu / run.wall_s,
        rig / run.wall_s,
        1 / per if per else float("nan"),
    )


def check_stream(url: str, body: bytes) -> None:
    """One request by hand: the answer must be a real SSE stream that ends with [DONE]."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        kind, text = resp.headers.get("Content-Type", ""), resp.read()
    if not kind.startswith("text/event-stream") or not text.rstrip().endswith(b"data: [DONE]"):
        raise SystemExit(f"bench: {url} did not stream ({kind}): {text[:200]!r}")


def start_targets(
    work: Path, targets: list[str], backend: int
) -> dict[str, tuple[str, subprocess.Popen[bytes]]]:
    out: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    for name, engine in (("geogate", None), ("geogate-granian", "granian")):
        if name not in targets:
            continue
        port = free_port()
        # the default config (log + GeoIP on); geogate-granian: on the granian engine
        conf = gateway_conf(work, port, backend, engine, name=name)
        p = spawn(
            pinned(PROXY_CPU, geogate_cmd("gateway", "--config", str(conf))), work / f"{name}.log"
        )
        out[name] = (f"http://127.0.0.1:{port}", p)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
    if "nginx" in targets:
        h1 = free_port()
        conf = nginx_conf(work, h1, free_port(), backend)  # its default access log on
        p = spawn(
            pinned(PROXY_CPU, ["nginx", "-c", str(conf), "-p", str(work)]), work / "nginx.log"
        )
        out["nginx"] = (f"http://127.0.0.1:{h1}", p)
        wait_http(f"http://127.0.0.1:{h1}/health", proc=p)
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per measured cell")
    ap.add_argument("--conc", default="16", help="concurrent connections, comma list")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--modes", default=",".join(MODES), help="subset of keepalive,fresh")
    ap.add_argument("--out", type=Path, default=RESULTS / "stream_setup", help="path prefix")
    args = ap.parse_args()
    args.conc = [int(c) for c in args.conc.split(",") if c.strip()]
    args.targets = [t for t in args.targets.split(",") if t.strip()]
    args.modes = [m for m in args.modes.split(",") if m.strip()]
    if set(args.targets) - set(TARGETS) or set(args.modes) - set(MODES):
        ap.error("unknown target or mode")
    if not args.conc or min(args.conc) < 1 or args.duration <= 0:
        ap.error("--conc and --duration must be positive")
    return args


def main() -> None:
    args = parse_args()
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = json.dumps(body).encode()
    work = Path(tempfile.mkdtemp(prefix="geogate-stream-setup-"))
    (work / "body.json").write_bytes(raw)
    cells: list[Cell] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        sim = geogate_cmd(
            "sim-backend",
            "--port",
            str(port),
            "--model",
            MODEL,
            "--tokens",
            "1",
            "--tokens-per-s",
            "0",
            "--ttft-ms",
            "0",
        )
        backend = spawn(pinned(LOAD_CPU, sim), work / "sim.log")
        procs.append(backend)
        wait_http(f"http://127.0.0.1:{port}/health", proc=backend)
        targets = start_targets(work, args.targets, port)
        procs += [p for _, p in targets.values()]
        print(f"stream set-up: logs in {work}", flush=True)
        for name, (base, p) in targets.items():
            check_stream(base + PATH, raw)
            for mode in args.modes:
                for conc in args.conc:
                    cell = measure(
                        name,
                        mode,
                        base + PATH,
                        work / "body.json",
                        conc,
                        args.duration,
                        process_tree(p.pid),
                        process_tree(backend.pid),
                    )
                    cells.append(cell)
                    print(line(cell), flush=True)
    finally:
        for p in reversed(procs):
            stop(p)
    write(cells, args)


def line(c: Cell) -> str:
    return (
        f"{c.target:8} {c.mode:9} c={c.concurrency:<4} {c.streams_per_s:8.0f} streams/s  "
        f"{c.proxy_cpu_us_per_stream:6.0f} µs CPU/stream  proxy core {c.proxy_core_busy:4.0%}  "
        f"rig core {c.rig_core_busy:4.0%}  -> {c.streams_per_core_s:6.0f} streams/s per core  "
        f"({c.ok}/{c.streams} ok)"
    )


def write(cells: list[Cell], args: argparse.Namespace) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    nginx = {(c.mode, c.concurrency): c for c in cells if c.target == "nginx"}
    lines = [
        "# New streams per second per core",
        "",
        f"Machine: {machine}. Command: `.venv/bin/python bench/stream_setup.py --duration "
        f"{args.duration:g} --conc {','.join(map(str, args.conc))}`.",
        "Backend: geogate sim-backend --tokens 1 --tokens-per-s 0 --ttft-ms 0 (a whole SSE "
        "stream at once: role chunk, one token, finish chunk, [DONE]). Load: h2load --h1, one "
        "stream at a time per connection; *fresh* sends `Connection: close`, so every stream "
        "is a new TCP connection to the proxy. Proxy on CPU 0; backend + h2load on CPU 1. "
        "geogate: default config (access log + GeoIP on); nginx: bench/overhead.py's config "
        "(access log on, keep-alive upstream pool).",
        "CPU/stream: the proxy's process tree (utime + stime from /proc) / streams answered "
        "2xx. Per core = 1 / CPU per stream: the streams/s one fully busy core would set up "
        "(the achieved streams/s is lower where the rig's core, not the proxy's, is the "
        "limit; limit = the core over 90 % busy, if any). x nginx: CPU per stream vs "
        "nginx's in the same mode and concurrency.",
        "",
        "| target | mode | c | streams | 2xx | streams/s | CPU µs/stream (±res) | x nginx | "
        "proxy core busy | rig core busy | streams/s per core | limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        base = nginx.get((c.mode, c.concurrency))
        ratio = (
            f"{c.proxy_cpu_us_per_stream / base.proxy_cpu_us_per_stream:.1f}"
            if base and base.proxy_cpu_us_per_stream
            else "-"
        )
        limit = (
            "proxy core"
            if c.proxy_core_busy >= BUSY
            else "rig core"
            if c.rig_core_busy >= BUSY
            else "neither (round trips)"
        )
        lines.append(
            f"| {c.target} | {c.mode} | {c.concurrency} | {c.streams} | {c.ok} | "
            f"{c.streams_per_s:,.0f} | {c.proxy_cpu_us_per_stream:.0f} (±{c.cpu_res_us:.0f}) | "
            f"{ratio} | {c.proxy_core_busy:.0%} | {c.rig_core_busy:.0%} | "
            f"{c.streams_per_core_s:,.0f} | {limit} |"
        )
    write_results(
        args.out,
        lines,
        {
            "machine": machine,
            "params": params(args),
            "cells": [asdict(c) for c in cells],
        },
    )


if __name__ == "__main__":
    main()
