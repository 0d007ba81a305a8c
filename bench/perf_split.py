#!/usr/bin/env python3
"""Where a proxy's CPU per paced stream (or per non-streaming request) goes, by binary: the
kernel, the Python interpreter, uvloop, httptools, libc, nginx itself; and, with
``--py-frames``, by Python function. py-spy sees Python frames only (on uvloop most samples
land in ``Runner.run``, below which it cannot look: bench/results/round7/profile_streaming.md);
``perf record -e cpu-clock`` samples the whole process, native code and system calls included,
with a software clock (this VM exposes no hardware counters), so it says whether a target's
extra cost per stream is Python's own work or the kernel's.

Every target is started as bench/ab.py starts it (proxy on CPU 0, sim-backend and load on CPU
1) and warmed up with one window of load. Then ``--rounds`` rounds take turns, as ab.py's
do: in each, every target is driven for a window with ``perf record`` and ``perf stat``
attached to its processes, switched on and off at the window's ends. A target's samples over
all its windows, each standing for 1/SAMPLE_HZ s of CPU, over the streams (requests) that ended
in them, give µs per stream (request), by binary. A window is ``--window`` seconds of paced
streams of ``--tokens`` chunks, or with ``--mode non-streaming`` ``--requests`` requests
(h2load) for answers of ``--tokens`` tokens. ``--events`` adds ``perf stat`` counters.

  .venv/bin/python bench/perf_split.py --targets nginx,floor-pipe-parse,floor-h1,geogate \
      [--mode streaming|non-streaming] [--tokens 64] [--tokens-per-s 50] \
      [--clock stream|random|lockstep] [--conc 16] [--window 8] [--requests 20000] \
      [--rounds 3] [--events syscalls:sys_enter_epoll_pwait,...] [--keep DIR] [--py-frames] \
      [--out bench/results/perf_split]

``--py-frames`` also splits each geogate target's CPU by Python function (bench/perf_frames.py):
its targets must run on CPython 3.12 or later (``geogate%/path/to/python3.12``), which it
runs with ``-X perf`` (``PYTHONPERFSUPPORT=1`` in their environment only), and perf records
call chains. The perf maps they write (``/tmp/perf-PID.map``) are removed at the end, copied
into ``--keep`` first where given: ``perf script`` needs them to name the Python frames.

Needs ``perf`` (Debian's linux-perf) and a kernel that lets this user sample the processes
(perf_event_paranoid, or root). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.sim_config import CLOCKS  # noqa: E402
from bench import perf_frames  # noqa: E402
from bench.ab import (  # noqa: E402
    check_positive,
    check_targets,
    geogate_trees,
    in_turn,
    requests,
    rig,
)
from bench.overhead import PACED_TOKENS_PER_S, PACED_TTFT_MS  # noqa: E402
from bench.overhead_cells import LOAD_CPU, WARMUP_S, run_loop  # noqa: E402
from bench.paced_load import run_paced  # noqa: E402
from bench.proc_cpu import CpuReading, cpu_between, fine_between, read_cpu  # noqa: E402
from bench.results_io import params, write_results  # noqa: E402

SAMPLE_HZ = 1999  # a sample per 0.5 ms of CPU: a 16-token stream's ~1 ms gets two
TOP_SYMBOLS = 12
REPORT_ARGS = ("-g", "none")  # flat: a recording with call chains (--py-frames) has them too
# perf's DSO names, grouped: what each part of the stack is.
GROUPS = (
    ("[kernel", "kernel (system calls, TCP, scheduling)"),
    ("libpython", "Python interpreter (libpython)"),
    ("python3", "Python interpreter (libpython)"),
    ("loop.cpython", "uvloop (libuv and its Cython)"),
    ("parser.cpython", "httptools (llhttp)"),
    ("url_parser", "httptools (llhttp)"),
    ("libc", "libc (malloc, memcpy)"),
    ("libm", "libc (malloc, memcpy)"),
    ("nginx", "nginx"),
    ("msgspec", "msgspec"),
    ("maxminddb", "maxminddb"),
)
LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s*(?:\[[.k]\]\s+(.*))?$")


def group(dso: str) -> str:
    for prefix, name in GROUPS:
        if dso.startswith(prefix):
            return name
    return "other: " + dso


# Counted over the same window as the samples: what the kernel was asked to do per stream.
COUNTS = ("context-switches", "cpu-migrations", "raw_syscalls:sys_enter")
PERF_START_S = 10.0  # perf attaches to a few processes in well under a second


def perf(kind: list[str], pids: list[int], ctl: Path) -> subprocess.Popen[bytes]:
    """``perf record`` or ``perf stat`` on ``pids``, started disabled: ``ctl`` (a fifo) turns
    it on and off at the window's ends."""
    cmd = ["perf", *kind, "--delay=-1", f"--control=fifo:{ctl}", "-p", ",".join(map(str, pids))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _open_control(fifo: Path, proc: subprocess.Popen[bytes], target: str) -> int:
    """The write end of perf's control fifo, once perf has opened its read end. A blocking
    open would wait forever for a perf that refused to start (a tracepoint this user may
    not read, perf_event_paranoid): poll, and say why it stopped."""
    deadline = time.monotonic() + PERF_START_S
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader yet
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.communicate()[1].decode(errors="replace").strip()
                why = err or "no reason given"
                raise SystemExit(f"perf did not start for {target}: {why}") from None
            time.sleep(0.05)


def counts(text: str, events: tuple[str, ...] = COUNTS) -> dict[str, float]:
    """``perf stat -x,``'s lines: value,unit,event,..."""
    found = {}
    for line in text.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2] in events and f[0].replace(".", "").isdigit():
            found[f[2]] = float(f[0])
    return found


def shares(data: Path, sort: str) -> list[tuple[int, str, str]]:
    """(samples, dso, symbol) rows of ``perf report`` sorted by ``sort``."""
    cmd = ["perf", "report", "-i", str(data), "--stdio", "-n", "--no-children", *REPORT_ARGS]
    out = subprocess.run(
        [*cmd, "--sort", sort],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = LINE.match(line)
        if m:
            rows.append((int(m.group(2)), m.group(3), (m.group(4) or "").strip()))
    return rows


@dataclass
class Tally:
    """One target's sums over its windows: a figure per stream is a sum over a sum."""

    streams: float = 0.0  # by share of life in the windows (paced_load), or requests
    proc_s: float = 0.0  # /proc's CPU seconds (schedstat nanoseconds where kept, else ticks)
    parts: collections.Counter[str] = field(default_factory=collections.Counter)
    symbols: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    rounds_us: list[float] = field(default_factory=list)  # each window's µs per stream
    # --py-frames: samples by (innermost Python function, kind of leaf)
    frames: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


def measure(
    target: str,
    port: int,
    pids: list[int],
    body: Path,
    args: argparse.Namespace,
    work: Path,
    tally: Tally,
) -> None:
    """One window of load through ``target`` with perf attached, added to ``tally``."""
    name = f"{target.replace('/', '_')}.{len(tally.rounds_us)}"
    data, fifos = work / f"{name}.perf", [work / f"{name}.rec.ctl", work / f"{name}.stat.ctl"]
    for f in fifos:
        os.mkfifo(f)
    sample = ["record", "-q", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-o", str(data)]
    py_frames = target in args.frame_targets
    if py_frames:
        sample += perf_frames.RECORD_ARGS
    rec = perf(sample, pids, fifos[0])
    stat = perf(["stat", "-x,", "-e", ",".join(args.counts)], pids, fifos[1])
    try:
        ctl = [_open_control(f, p, target) for f, p in zip(fifos, (rec, stat), strict=True)]
    except SystemExit:
        for p in (rec, stat):
            p.kill()
        raise
    cpu: list[CpuReading] = []

    def marks() -> None:  # both ends of the window
        cpu.append(read_cpu(pids))
        for fd in ctl:
            os.write(fd, b"disable\n" if len(cpu) > 1 else b"enable\n")

    try:
        time.sleep(0.5)  # perf attached to every process
        done = load_window(target, port, body, args, marks)
    finally:
        for fd in ctl:
            os.close(fd)
        for p in (rec, stat):
            p.send_signal(signal.SIGINT)
    errs = [p.communicate(timeout=60)[1].decode(errors="replace") for p in (rec, stat)]
    if not data.exists() or len(cpu) != 2:
        raise SystemExit(f"perf record failed for {target}: {errs[0]}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(data, args.keep / data.name)
    window: collections.Counter[str] = collections.Counter()
    if py_frames:
        tally.frames.update(perf_frames.tally(perf_frames.script(data)))
    for n, dso, sym in shares(data, "dso,sym"):  # summed by binary: the same as a dso report
        window[group(dso)] += n
        tally.symbols[(dso, sym)] += n
    tally.parts.update(window)
    tally.counts.update(counts(errs[1], args.counts))
    tally.streams += done
    fine = fine_between(cpu[0], cpu[1])
    tally.proc_s += cpu_between(cpu[0], cpu[1])[0] if fine is None else fine
    tally.rounds_us.append(round(sum(window.values()) * 1e6 / SAMPLE_HZ / done, 1))


def load_window(
    target: str, port: int, body: Path, args: argparse.Namespace, marks: Callable[[], None]
) -> float:
    """One window of load on ``target``, ``marks()`` at both ends: paced streams for
    ``--window`` s, or ``--requests`` non-streaming requests (h2load). Returns how many ended
    in the window; exits, in one line, if any failed."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    if args.mode == "streaming":
        run = run_paced(url, "h1", args.conc, body.read_bytes(), WARMUP_S, args.window, marks)
        res = run_loop(run)
        if sum(res.failures.values()) or not res.completed_in_window:
            raise SystemExit(f"streams through {target}: failures {dict(res.failures)}")
        return res.streams_in_window  # by share of life in the window (paced_load)
    marks()
    requests(url, body, args.requests, args.conc)
    marks()
    return int(args.requests)


def summary(t: Tally, unit: str) -> dict[str, Any]:
    """A target's figures; ``unit``: what the keys' "stream" stands for ("request" in the
    non-streaming mode: the keys stay, so that older files read the same)."""
    per_sample = 1e6 / SAMPLE_HZ / t.streams  # µs of CPU per stream that one sample stands for
    return {
        "unit": unit,
        **perf_frames.summary(t.frames, per_sample),
        "us_per_stream": round(sum(t.parts.values()) * per_sample, 1),
        "us_per_stream_proc": round(t.proc_s / t.streams * 1e6, 1),
        "streams": t.streams,
        "samples": sum(t.parts.values()),
        "us_per_stream_each_round": t.rounds_us,
        "us_by_part": {g: round(n * per_sample, 1) for g, n in t.parts.most_common()},
        "per_stream": {k: round(v / t.streams, 1) for k, v in t.counts.items()},
        "top_symbols": [
            (n, dso, sym, round(n * per_sample, 1))
            for (dso, sym), n in t.symbols.most_common(TOP_SYMBOLS)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="nginx,floor-pipe-parse,floor-h1,geogate")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--tokens-per-s", type=float, default=PACED_TOKENS_PER_S, help="streaming: the pace"
    )
    ap.add_argument(
        "--clock", choices=CLOCKS, default="stream", help="streaming: the sim's token clock"
    )
    ap.add_argument(
        "--window", type=float, default=8.0, help="streaming: seconds recorded per window"
    )
    ap.add_argument("--rounds", type=int, default=1, help="windows per target, taking turns")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument(
        "--events",
        default="",
        help="more perf stat events to count per stream, comma-separated "
        "(syscalls:sys_enter_epoll_pwait: the event loop's wake-ups)",
    )
    ap.add_argument("--mode", choices=("streaming", "non-streaming"), default="streaming")
    ap.add_argument(
        "--requests", type=int, default=20000, help="non-streaming: requests per window"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "perf_split")
    ap.add_argument("--keep", type=Path, help="copy each window's perf.data into this folder")
    ap.add_argument(
        "--py-frames",
        action="store_true",
        help="split geogate targets by Python function (they must run on CPython 3.12+)",
    )
    args = ap.parse_args()
    # This process is the streaming load's client (bench/paced_load.py runs in it): on the
    # load CPU with the sim, off the proxies' (as bench/overhead.py puts it).
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    if shutil.which("perf") is None:
        raise SystemExit("perf_split: needs `perf` (apt-get install linux-perf)")
    targets = check_targets(ap, args.targets)
    check_positive(ap, args, "rounds", "window", "conc", "tokens", "tokens_per_s", "requests")
    args.counts = COUNTS + tuple(e for e in args.events.split(",") if e and e not in COUNTS)
    args.frame_targets = sorted(perf_frames.frame_targets(ap, targets)) if args.py_frames else []
    env = {t: {perf_frames.PERF_SUPPORT_ENV: "1"} for t in args.frame_targets}  # `-X perf`
    tallies = {t: Tally() for t in targets}
    streaming = args.mode == "streaming"
    pids: list[int] = []
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            rig(targets, streaming, args.tokens, args.tokens_per_s, args.clock, env) as rigged,
        ):
            body, ports = rigged
            pids = [pid for t in args.frame_targets for pid in ports[t][1]]
            for target, (port, _pids) in ports.items():  # warm-up, one window each
                load_window(target, port, body, args, lambda: None)
            for r in range(args.rounds):
                for target, (port, tree) in in_turn(ports, r):
                    measure(target, port, tree, body, args, Path(tmp), tallies[target])
    finally:
        perf_frames.clear_maps(pids, args.keep)
    unit = "stream" if streaming else "request"
    report(args, targets, {t: summary(tallies[t], unit) for t in targets})


def report(
    args: argparse.Namespace, targets: list[str], results: dict[str, dict[str, Any]]
) -> None:
    parts = sorted(
        {g for r in results.values() for g in r["us_by_part"]},
        key=lambda g: -max(r["us_by_part"].get(g, 0) for r in results.values()),
    )
    if args.mode == "streaming":
        unit, window = (
            "stream",
            (
                f"a {args.window:g} s window of paced streams ({args.tokens} tokens at "
                f"{args.tokens_per_s:g}/s on {CLOCKS[args.clock]}, first after {PACED_TTFT_MS} ms, "
                f"HTTP/1.1, c = {args.conc})"
            ),
        )
    else:
        unit, window = (
            "request",
            (
                f"a window of {args.requests} non-streaming requests (h2load, HTTP/1.1, "
                f"c = {args.conc}, {args.tokens} tokens each)"
            ),
        )
    lines = [
        f"# CPU per {unit} by binary (bench/perf_split.py)",
        "",
        f"`perf record -e cpu-clock -F {SAMPLE_HZ}` on each proxy's processes for {window}, "
        f"after a warm-up window; {args.rounds} window(s) per target, the targets taking "
        "turns, one at a time; proxy on CPU 0, sim-backend and load on CPU 1. Each sample "
        f"stands for 1/{SAMPLE_HZ} s of CPU; µs per {unit}: the samples of all windows over "
        f"the {unit}s that ended in them:",
        "",
        "| part | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
        "| **all (perf's samples)** | "
        + " | ".join(f"**{results[t]['us_per_stream']:.0f}**" for t in targets)
        + " |",
        "| all (/proc: schedstat, else ticks) | "
        + " | ".join(f"{results[t]['us_per_stream_proc']:.0f}" for t in targets)
        + " |",
        "| each window (perf's samples) | "
        + " | ".join(
            ", ".join(f"{u:.0f}" for u in results[t]["us_per_stream_each_round"]) for t in targets
        )
        + " |",
        "| samples | " + " | ".join(str(results[t]["samples"]) for t in targets) + " |",
    ]
    for k in args.counts:
        cells = [results[t]["per_stream"].get(k, float("nan")) for t in targets]
        row = " | ".join(f"{c:.1f}" for c in cells)
        lines.append(f"| {k} per {unit} (perf stat) | {row} |")
    for g in parts:
        cells = [results[t]["us_by_part"].get(g, 0.0) for t in targets]
        lines.append(f"| {g} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    for t in targets:
        lines += ["", f"Top symbols, {t} (samples, binary, symbol: µs per {unit}):", ""]
        lines += [f"- {n} `{d}` {s}: {u}" for n, d, s, u in results[t]["top_symbols"]]
    for t in targets:
        if "by_function" in results[t]:
            lines += perf_frames.report(t, results[t], unit)
    doc = {"params": params(args), "results": results}
    write_results(args.out, lines, doc, trees=geogate_trees(targets))


if __name__ == "__main__":
    main()
