#!/usr/bin/env python3
"""What an idle geogate spends: the CPU of a gateway's process tree with no requests at all.

One sim-backend, and one gateway per source tree given (``--tree LABEL=PATH``, default the
repository itself), each in bench/overhead.py's benchmark config (``gateway_conf``: one
upstream, access log on, a GeoIP database; ``--engine``, uvicorn by default). All of them
idle side by side, so a before/after pair is read in the same windows on the same machine:
the trees' gateways share CPU 0, the backend CPU 1 (bench/overhead_cells.pinned), and
nothing is sent to them but what they do on their own (health probes, load polls, the
dashboard's sampler, the access log's flush task, timers).

Each window of ``--seconds`` reads utime + stime of every process of each tree from /proc
(bench/proc_cpu.py) before and after; clock ticks are 10 ms, so a window's figure is good to
one tick per process over its length (0.5 ms/s per process over 20 s). Each window also
sums /proc/PID/task/*/schedstat (nanoseconds of every live thread; a kernel without
schedstats reports zeros, and a thread that ended mid-window leaves no figure: then that
column says 0): the finer figure when it is there.
``--runs`` windows
show the noise: the table gives each window and the median. With ``--profile S``, py-spy then
samples each gateway for S seconds (idle threads left out, so the samples are the work) and
the top functions by inclusive share say which task costs what.

Writes bench/results/idle_cpu.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/idle_cpu.py [--seconds 20] [--runs 3] [--profile 20]
     [--tree before=/tmp/old-tree --tree after=.]  (a tree: gateway/ geodb/ backend/ as files)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, TOKENS, gateway_conf  # noqa: E402
from bench.overhead_cells import LOAD_CPU, PROXY_CPU, pinned  # noqa: E402
from bench.proc_cpu import CLK_TCK, cpu_between, fine_between, process_tree, read_cpu  # noqa: E402
from bench.pyspy_profile import summarize  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SETTLE_S = 3.0  # after /readyz: start-up's one-off work (imports, first probes) is done
# Every tree on one engine (--engine): the engine's own timers count as idle work too (uvicorn's
# main loop woke ten times a second until gateway.h1.server); granian for trees older than the
# uvicorn engine.
ENGINE = "uvicorn"


@dataclass
class Gateway:
    label: str
    tree: Path
    proc: subprocess.Popen[bytes]
    pids: list[int] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)  # ms of CPU per second, whole tree
    sched: list[float] = field(default_factory=list)  # the same from schedstat (ns-precise)
    per_proc: list[dict[str, float]] = field(default_factory=list)  # pid's role -> ms/s
    profile: dict[str, Any] | None = None


def start_gateway(work: Path, label: str, tree: Path, backend: int, engine: str) -> Gateway:
    """``python -m gateway`` imports from its working directory first: run in ``tree``."""
    port = free_port()
    conf = gateway_conf(work, port, backend, engine, name=f"idle-{label}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
    with open(work / f"gateway-{label}.log", "ab") as out:
        p = subprocess.Popen(
            pinned(PROXY_CPU, geogate_cmd("gateway", "--config", str(conf))),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tree,
            start_new_session=True,
        )
    gw = Gateway(label, tree, p)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
    return gw


def roles(gw: Gateway) -> dict[int, str]:
    """The tree's processes by role: taskset's exec'd python is the parent, the rest workers."""
    return {pid: "parent" if pid == gw.proc.pid else f"worker{i}" for i, pid in enumerate(gw.pids)}


def measure(gws: list[Gateway], seconds: float) -> None:
    """One window for every gateway at once: each tree's total and each process's share."""
    before = {gw.label: {p: read_cpu([p]) for p in gw.pids} for gw in gws}
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    after = {gw.label: {p: read_cpu([p]) for p in gw.pids} for gw in gws}
    for gw in gws:
        # schedstat's nanoseconds, from the same readings; 0 where a process has none to give
        # (a kernel without schedstat, or a thread gone in between)
        fine = [fine_between(before[gw.label][p], after[gw.label][p]) for p in gw.pids]
        ns_s = 0.0 if any(f is None for f in fine) else sum(f or 0.0 for f in fine)
        gw.sched.append(round(ns_s * 1000 / wall, 2))
        names = roles(gw)
        ms = {
            names[p]: cpu_between(before[gw.label][p], after[gw.label][p])[0] * 1000 / wall
            for p in gw.pids
        }
        gw.per_proc.append({k: round(v, 2) for k, v in ms.items()})
        gw.windows.append(round(sum(ms.values()), 2))


def profile(gw: Gateway, seconds: float, work: Path, top: int) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = work / f"spy-{gw.label}.txt"
    args = [spy, "record", "--pid", str(gw.proc.pid), "--subprocesses", "--format", "raw"]
    args += ["--nonblocking", "--rate", "100", "--duration", str(int(seconds)), "-o", str(raw)]
    done = subprocess.run(
        pinned(LOAD_CPU, args), capture_output=True, timeout=seconds + 60, check=False
    )
    if not raw.exists():
        return {"error": done.stderr.decode(errors="replace")[-300:]}
    out = summarize(raw, top)
    out["seconds"] = seconds
    return out


def run(args: argparse.Namespace, work: Path) -> list[Gateway]:
    backend = free_port()
    sim = ["sim-backend", "--port", str(backend), "--model", MODEL, "--tokens", str(TOKENS)]
    sim_proc = spawn(pinned(LOAD_CPU, geogate_cmd(*sim)), work / "sim.log")
    gws: list[Gateway] = []
    try:
        wait_http(f"http://127.0.0.1:{backend}/health", proc=sim_proc)
        for label, tree in args.tree:
            gws.append(start_gateway(work, label, tree, backend, args.engine))
        time.sleep(SETTLE_S)
        for gw in gws:
            gw.pids = process_tree(gw.proc.pid)
        for i in range(args.runs):
            measure(gws, args.seconds)
            print(
                f"window {i + 1}: "
                + "  ".join(f"{g.label} {g.windows[-1]:.1f} ({g.sched[-1]:.2f})" for g in gws)
            )
        if args.profile:
            for gw in gws:
                gw.profile = profile(gw, args.profile, work, args.top)
    finally:
        for p in [*(g.proc for g in reversed(gws)), sim_proc]:
            stop(p)
    return gws


def report(gws: list[Gateway], args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    res = 1000 / CLK_TCK / args.seconds  # ms/s: one tick per process over a window
    lines = [
        "# Idle CPU of a geogate gateway (no requests)",
        "",
        f"`.venv/bin/python bench/idle_cpu.py --seconds {args.seconds:g} --runs {args.runs}"
        + (f" --profile {args.profile:g}" if args.profile else "")
        + "".join(f" --tree {g.label}=..." for g in gws)
        + "`: bench/overhead.py's benchmark config (one upstream, access log on, GeoIP "
        f"database), {args.engine} engine. ms of CPU per second of the whole process tree, over "
        f"{args.runs} windows of {args.seconds:g} s each, side by side; ± {res:.1f} ms/s per "
        "process per window (10 ms clock ticks).",
        "",
        "| tree | windows (ms/s) | median | schedstat windows (ms/s) | median | per process, "
        "median |",
        "|---|---|---|---|---|---|",
    ]
    for g in gws:
        per = {k: statistics.median(w[k] for w in g.per_proc) for k in g.per_proc[0]}
        lines.append(
            f"| {g.label} | {' / '.join(f'{w:.1f}' for w in g.windows)} | "
            f"{statistics.median(g.windows):.1f} | {' / '.join(f'{w:.2f}' for w in g.sched)} | "
            f"{statistics.median(g.sched):.2f} | "
            + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
            + " |"
        )
    for g in gws:
        if g.profile and "inclusive" in g.profile:
            lines += ["", f"py-spy, {g.label}: {g.profile['samples']} samples in "]
            lines[-1] += f"{g.profile['seconds']:g} s at 100 Hz (each ~10 ms of CPU)"
            lines += ["", "| function (inclusive) | share |", "|---|---|"]
            lines += [f"| `{k}` | {v} % |" for k, v in g.profile["inclusive"]]
    doc = {
        "seconds": args.seconds,
        "runs": args.runs,
        "engine": args.engine,
        "resolution_ms_per_s_per_proc": round(res, 2),
        "trees": {
            g.label: {
                "path": str(g.tree),
                "windows_ms_per_s": g.windows,
                "median_ms_per_s": statistics.median(g.windows),
                "schedstat_windows_ms_per_s": g.sched,
                "schedstat_median_ms_per_s": statistics.median(g.sched),
                "per_process": g.per_proc,
                "profile": g.profile,
            }
            for g in gws
        },
    }
    return lines, doc


def tree_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not (Path(path) / "gateway").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=PATH, PATH holding gateway/")
    return label, Path(path).resolve()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of one window")
    ap.add_argument("--runs", type=int, default=3, help="windows, to show the noise")
    ap.add_argument("--engine", choices=("uvicorn", "granian"), default=ENGINE)
    ap.add_argument("--profile", type=float, default=0.0, help="then py-spy each for S s")
    ap.add_argument("--top", type=int, default=15, help="functions shown per profile")
    ap.add_argument(
        "--tree", type=tree_arg, action="append", help="LABEL=PATH (repeat); default now=."
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "idle_cpu", help="OUT.md/.json")
    ap.add_argument("--note", default="", help="appended to OUT.md: what each tree is")
    args = ap.parse_args()
    args.tree = args.tree or [("now", ROOT)]
    work = Path(tempfile.mkdtemp(prefix="geogate-idle-"))
    gws = run(args, work)
    lines, doc = report(gws, args)
    doc["note"] = args.note
    write_results(args.out, lines, doc, md_tail=f"\n{args.note}\n" if args.note else "")


if __name__ == "__main__":
    main()
