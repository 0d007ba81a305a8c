"""bench/perf_split.py's readers of perf's output: report rows, stat lines, binaries grouped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.perf_split import LINE, SAMPLE_HZ, Tally, _open_control, counts, group, summary


def test_a_report_row_gives_samples_binary_and_symbol() -> None:
    m = LINE.match("    16.00%           145  libpython3.11.so.1.0   [.] _PyEval_EvalFrameDefault")
    assert m is not None
    assert (m.group(2), m.group(3), m.group(4)) == (
        "145",
        "libpython3.11.so.1.0",
        "_PyEval_EvalFrameDefault",
    )
    m = LINE.match("    45.10%          3150  [kernel.kallsyms]")  # sorted by binary alone
    assert m is not None and m.group(3) == "[kernel.kallsyms]" and m.group(4) is None
    assert LINE.match("# Samples: 7K of event 'cpu-clock'") is None


def test_stat_lines_count_only_the_events_asked_for_and_skip_what_perf_could_not() -> None:
    text = (
        "218,,context-switches,56144935,100.00,,\n"
        "<not supported>,,cpu-migrations,0,100.00,,\n"
        "870,,raw_syscalls:sys_enter,56144935,100.00,,\n"
        "12,,page-faults,1,100.00,,\n"
    )
    assert counts(text) == {"context-switches": 218.0, "raw_syscalls:sys_enter": 870.0}


def test_more_events_are_counted_when_asked_for() -> None:
    text = "12,,syscalls:sys_enter_epoll_pwait,1,100.00,,\n218,,context-switches,1,100.00,,\n"
    wanted = ("context-switches", "syscalls:sys_enter_epoll_pwait")
    assert counts(text, wanted) == {
        "context-switches": 218.0,
        "syscalls:sys_enter_epoll_pwait": 12.0,
    }


def test_binaries_are_grouped_by_what_they_are() -> None:
    assert group("[kernel.kallsyms]").startswith("kernel")
    assert group("libpython3.11.so.1.0") == group("python3.11")
    assert group("loop.cpython-311-x86_64-linux-gnu.so").startswith("uvloop")
    assert group("parser.cpython-311-x86_64-linux-gnu.so").startswith("httptools")
    assert group("somelib.so") == "other: somelib.so"


def test_a_perf_that_will_not_start_is_one_line_with_its_reason_not_a_hang(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "ctl"
    os.mkfifo(fifo)
    quits = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('event syntax error')"],
        stderr=subprocess.PIPE,
    )
    with pytest.raises(SystemExit, match="perf did not start for nginx: event syntax error"):
        _open_control(fifo, quits, "nginx")


def test_the_control_fifo_opens_once_perf_reads_it(tmp_path: Path) -> None:
    fifo = tmp_path / "ctl"
    os.mkfifo(fifo)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"import time; f = open({str(fifo)!r}); print(f.read(), end='')"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # A text-mode reader stands in for perf (Popen[bytes]): it opens the fifo, so its
    # stderr, the one thing read as bytes, is never read.
    fd = _open_control(fifo, reader, "nginx")  # type: ignore[arg-type]
    os.write(fd, b"enable\n")
    os.close(fd)
    assert reader.communicate(timeout=10)[0] == "enable\n"


def test_a_tally_is_samples_over_streams_summed_over_its_windows() -> None:
    t = Tally(streams=40, proc_s=0.2)
    t.parts.update({"kernel": 1999, "libpython": 999})  # 1 s and ~0.5 s of CPU at SAMPLE_HZ
    t.symbols.update({("[kernel.kallsyms]", "tcp_ack"): 1999})
    t.counts.update({"context-switches": 1200.0})
    t.rounds_us = [70000.0, 80000.0]
    s = summary(t, "stream")
    assert SAMPLE_HZ == 1999  # the figures below assume it
    assert s["us_by_part"] == {"kernel": 25000.0, "libpython": 12493.7}  # µs per stream
    assert s["us_per_stream"] == 37493.7 and s["samples"] == 2998
    assert s["us_per_stream_proc"] == 5000.0  # 0.2 s over 40 streams
    assert s["per_stream"] == {"context-switches": 30.0}
    assert s["top_symbols"] == [(1999, "[kernel.kallsyms]", "tcp_ack", 25000.0)]
    assert s["us_per_stream_each_round"] == [70000.0, 80000.0]
    assert s["unit"] == "stream" and "by_function" not in s  # no Python frames asked for
