"""Measuring one cell of bench/overhead.py: h2load for non-streaming cells, bench/paced_load.py
for streaming ones; both read the proxy's CPU around the measured part (bench/proc_cpu.py).
Row is one cell's result. pinned and pct are re-exported by bench/overhead.py (bench/streams.py
imports them from there)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.paced_load import H2_STREAMS_PER_CONN, run_paced
from bench.proc_cpu import CpuReading, cpu_between, fine_between, read_cpu

PROXY_CPU, LOAD_CPU = "0", "1"
WARMUP_S = 1.0  # streaming: connections open, pools and caches warm before the window opens


@dataclass
class Row:
    target: str
    mode: str
    proto: str
    concurrency: int
    rps: float
    p50_ms: float  # request sent -> end of response (streaming: end of stream)
    p99_ms: float
    ok: int
    failed: int
    cpu_ms_per_req: float | None = None  # the proxy's process tree; None for direct
    cpu_res_ms: float | None = None  # that figure's resolution: the tick error / requests
    # The same from schedstat's nanoseconds (bench/proc_cpu.py), where the kernel keeps them.
    cpu_fine_ms_per_req: float | None = None
    ttft_p50_ms: float | None = None  # streaming only: request sent -> first content token
    ttft_p99_ms: float | None = None
    load_cpu_busy: float | None = None  # streaming: (backend + client CPU) / window, CPU 1
    failures: dict[str, int] = field(default_factory=dict)


def pinned(cpu: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *args] if shutil.which("taskset") and os.cpu_count() else args


def missing_tool(tool: str) -> str | None:
    """The one line a benchmark exits with when ``tool`` is not on PATH, else None."""
    if shutil.which(tool):
        return None
    return f"bench: {tool} not found; run it through scripts/dev bench, which installs it"


def _h2load_once(url: str, body: Path, shape: list[str], n: int, log: Path) -> str:
    log.unlink(missing_ok=True)
    # Count-based runs: h2load 1.52's duration mode (-D) stalls at 0 requests on some h2c
    # servers (nginx, hypercorn), so a short calibration run sizes the measured one instead.
    args = [
        "h2load",
        "-t",
        "1",
        *shape,
        "-n",
        str(n),
        "-d",
        str(body),
        "-H",
        "content-type: application/json",
        "--log-file",
        str(log),
        url,
    ]
    return subprocess.run(
        pinned(LOAD_CPU, args), capture_output=True, text=True, timeout=300
    ).stdout


def latencies_ms(log: Path) -> list[float]:
    """Each 2xx request's latency in ms from h2load's ``--log-file`` (start µs, status, µs;
    a request that got no answer has status -1); none when h2load wrote no log."""
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].isdigit() and 200 <= int(parts[1]) < 300:
            found.append(int(parts[2]) / 1000)
    return found


def h2load(
    url: str, body: Path, proto: str, conc: int, duration: float, log: Path, proxy: list[int]
) -> Row:
    """One non-streaming cell; the Row's target and mode are the caller's to fill in."""
    # Checked here, for every script that measures with it: through taskset a missing h2load
    # is not an exception but an exit status, and the cell read as every request failed.
    if problem := missing_tool("h2load"):
        sys.exit(problem)
    if proto == "h1":
        shape = ["--h1", "-c", str(conc), "-m", "1"]
    else:
        conns = max(1, -(-conc // H2_STREAMS_PER_CONN))
        shape = ["-c", str(conns), "-m", str(max(1, conc // conns))]
    # Calibration, which is also the warm-up: pools filled, caches hot.
    out = _h2load_once(url, body, shape, max(conc * 20, 400), log)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    n = max(conc * 10, int(float(m.group(1)) * duration)) if m else conc * 10
    before = read_cpu(proxy)
    out = _h2load_once(url, body, shape, n, log)
    cpu, res = cpu_between(before, read_cpu(proxy))
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    rps = float(m.group(1)) if m else 0.0
    lat = latencies_ms(log)
    ok = len(lat)
    # Requests that never got a 2xx (errors, resets, other statuses) are failures.
    row = Row("", "", proto, conc, rps, pct(lat, 0.5), pct(lat, 0.99), ok, n - ok)
    if proxy:
        row.cpu_ms_per_req, row.cpu_res_ms = cpu * 1000 / n, res * 1000 / n
    return row


T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def paced(
    url: str, body: bytes, proto: str, conc: int, duration: float, proxy: list[int], rig: list[int]
) -> Row:
    """One streaming cell, this process being the client (pinned to the load CPU)."""
    marks: list[tuple[CpuReading, CpuReading, float]] = []

    def mark() -> None:
        marks.append((read_cpu(proxy), read_cpu(rig), time.process_time()))

    res = run_loop(run_paced(url, proto, conc, body, min(WARMUP_S, duration), duration, mark))
    (p0, b0, c0), (p1, b1, c1) = marks
    cpu, cpu_res = cpu_between(p0, p1)
    # Streams by their share of life in the window, not by ends (paced_load.PacedResult)
    done = max(1e-9, res.streams_in_window)
    row = Row(
        "",
        "streaming",
        proto,
        conc,
        res.streams_in_window / res.window_s,
        pct(res.total_ms, 0.5),
        pct(res.total_ms, 0.99),
        len(res.total_ms),
        sum(res.failures.values()),
        ttft_p50_ms=pct(res.ttft_ms, 0.5),
        ttft_p99_ms=pct(res.ttft_ms, 0.99),
        load_cpu_busy=(cpu_between(b0, b1)[0] + c1 - c0) / res.window_s,
        failures=dict(res.failures),
    )
    if proxy:
        row.cpu_ms_per_req, row.cpu_res_ms = cpu * 1000 / done, cpu_res * 1000 / done
        fine = fine_between(p0, p1)
        row.cpu_fine_ms_per_req = None if fine is None else fine * 1000 / done
    return row


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]
