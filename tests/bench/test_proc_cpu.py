"""bench/proc_cpu.py: CPU of a process tree, including a child that exits and is reaped
between the two readings (a worker restarted mid-cell still counts)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.proc_cpu import (
    CpuReading,
    cpu_between,
    fine_between,
    idle_ms_per_s,
    process_tree,
    read_cpu,
)

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

BUSY_S = 0.5
# A parent that starts a child burning BUSY_S of CPU, reaps it, then idles until killed. The
# child says "go" once it is up and burns only when told to (a line on the stdin it shares
# with the parent): the test reads "before" in between, so however loaded the machine, no
# burning happens before that reading, and the interpreter's start-up is not counted.
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import sys, time
print("go", flush=True)
sys.stdin.readline()
t = time.process_time()
while time.process_time() - t < {BUSY_S}:
    pass
'''])
child.wait()
print("reaped", flush=True)
time.sleep(60)
"""


def test_tree_cpu_counts_a_reaped_child() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdin is not None and parent.stdout is not None
        assert parent.stdout.readline() == "go\n"
        tree = process_tree(parent.pid)
        assert len(tree) == 2, tree  # the parent and the child, which waits for its line
        before = read_cpu(tree)
        parent.stdin.write("burn\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "reaped\n"
        cpu, resolution = cpu_between(before, read_cpu(tree))
    finally:
        parent.kill()
        parent.wait()
    # The child is gone from /proc by now: its time is in the parent's cutime + cstime.
    assert BUSY_S - 0.2 <= cpu <= BUSY_S + 0.2 + resolution, cpu
    assert 0 < resolution <= 0.05


def test_idle_cpu_is_per_second_of_wall_time_for_each_tree() -> None:
    # One process burning a core, one asleep, read over the same wait.
    burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleep = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Past the interpreter's start: its 60-120 ms of CPU is not the sleeper's idle.
        assert sleep.stdout is not None and sleep.stdout.readline() == "up\n"
        idle, _ = idle_ms_per_s({"burn": [burn.pid], "sleep": [sleep.pid]}, 0.5)
        ticks, fine = idle_ms_per_s({"burn": [burn.pid]}, 0.5, fine=False)
    finally:
        burn.kill()
        sleep.kill()
        burn.wait()
        sleep.communicate()  # and closes its pipe
    assert set(idle) == {"burn", "sleep"}
    assert idle["sleep"] < 100  # ms of CPU a second: asleep is near 0
    assert idle["burn"] > 300  # a busy loop gets most of a core, on this 2-core VM too
    assert not fine and ticks["burn"] > 300  # the ticks when asked for them


def test_the_fine_clock_counts_a_live_process_in_nanoseconds_or_says_it_cannot() -> None:
    burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # past the interpreter's start-up
        before, t0 = read_cpu([burn.pid]), time.perf_counter()
        time.sleep(0.5)
        after, gap = read_cpu([burn.pid]), time.perf_counter() - t0
    finally:
        burn.kill()
        burn.wait()
    fine = fine_between(before, after)
    if before.ns == 0:  # a kernel that keeps no schedstat: the ticks are all there is
        assert fine is None
    else:
        # most of a core for the 0.5 s (and no more than the wall time between the readings)
        assert fine is not None and 0.1 < fine <= gap + 0.01, (fine, gap)
        ticks = cpu_between(before, after)[0]
        assert abs(fine - ticks) <= 0.03, (fine, ticks)  # both clocks agree within ticks
    assert fine_between(CpuReading(1, 1, 0), CpuReading(2, 1, 5)) is None
    one, two = frozenset({7}), frozenset({7, 8})
    assert fine_between(CpuReading(1, 1, 10**9, one), CpuReading(2, 1, 3 * 10**9, two)) == 2.0
    # a thread gone by the second reading took its time with it: not a figure to trust
    assert fine_between(CpuReading(1, 1, 10**9, two), CpuReading(2, 1, 3 * 10**9, one)) is None
