"""CPU time of a process tree from /proc, for CPU-per-request figures in bench/overhead.py.

utime + stime of /proc/PID/stat count every thread of the process, including threads that have
exited, in clock ticks (1/CLK_TCK s, 10 ms on Linux). A difference of two readings is off by
less than one tick per process, so each reading also says how many processes it summed: the
caller turns that into a resolution and says when a cell is too short for it.
Each reading also sums /proc/PID/task/TID/schedstat: nanoseconds on a CPU per live thread, a
finer clock where the kernel keeps it (some report zeros, and it loses threads that exit: a
proxy's threads live as long as it does). Over a few seconds of paced streams, ticks move in
steps of 100 µs and more per stream; nanoseconds resolve a few µs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses


def process_tree(pid: int) -> list[int]:
    """pid and its descendants: granian's workers and nginx's worker are children."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int(stat_fields(int(d.name))[1])
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
    tree, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        todo += kids
    return tree


@dataclass(frozen=True)
class CpuReading:
    ticks: int  # utime + stime + cutime + cstime, summed over the processes read
    procs: int  # how many of them could be read (each adds < 1 tick of error to a difference)
    ns: int = 0  # schedstat's nanoseconds over their live threads; 0 where the kernel keeps none
    threads: frozenset[int] = frozenset()  # the threads ``ns`` summed


def _sched(pids: Sequence[int]) -> tuple[int, frozenset[int]]:
    """CPU nanoseconds of every live thread of ``pids`` (/proc/PID/task/TID/schedstat), and
    those threads."""
    total, tids = 0, set()
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended while we looked
            tids.add(int(stat.parent.name))
    return total, frozenset(tids)


def read_cpu(pids: Sequence[int]) -> CpuReading:
    """Cheap enough (one small read per pid) to call inside a measurement window. cutime and
    cstime are included so a worker that exits and is reaped mid-cell still counts."""
    ticks = procs = 0
    for p in pids:
        try:
            f = stat_fields(p)
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            procs += 1
        except (OSError, ValueError, IndexError):
            continue
    return CpuReading(ticks, procs, *_sched(pids))


def cpu_between(before: CpuReading, after: CpuReading) -> tuple[float, float]:
    """(CPU seconds, resolution in seconds) between two readings of the same processes."""
    return (after.ticks - before.ticks) / CLK_TCK, max(before.procs, after.procs) / CLK_TCK


def fine_between(before: CpuReading, after: CpuReading) -> float | None:
    """CPU seconds between two readings from schedstat's nanoseconds; None where the kernel
    reports none, or where a thread of the first reading is gone by the second (its time
    would drop out of the sum; the ticks keep reaped children's): then cpu_between's ticks
    are all there is."""
    if not (before.ns and after.ns) or before.threads - after.threads:
        return None
    return (after.ns - before.ns) / 1e9


def idle_ms_per_s(
    trees: Mapping[str, Sequence[int]], seconds: float, fine: bool = True
) -> tuple[dict[str, float], bool]:
    """ms of CPU per second each process tree spends over the next ``seconds`` (wall time,
    measured), all read over the same wait: a proxy's background work with no requests. In
    schedstat's nanoseconds where ``fine`` and the kernel keeps them for every tree, else in
    ticks; the second value says which (True: nanoseconds)."""
    before = {name: read_cpu(tree) for name, tree in trees.items()}
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    after = {name: read_cpu(tree) for name, tree in trees.items()}
    ns = {name: fine_between(before[name], after[name]) for name in trees}
    if not fine or any(f is None for f in ns.values()):  # one clock for all of them: ticks
        ticks = {name: cpu_between(before[name], after[name])[0] for name in trees}
        return {name: t * 1000 / wall for name, t in ticks.items()}, False
    return {name: (f or 0.0) * 1000 / wall for name, f in ns.items()}, True
