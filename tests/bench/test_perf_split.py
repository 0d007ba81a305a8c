"""bench/perf_split.py's readers of perf's output: report rows, stat lines, binaries grouped."""

from __future__ import annotations

from bench.perf_split import LINE, counts, group


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


def test_binaries_are_grouped_by_what_they_are() -> None:
    assert group("[kernel.kallsyms]").startswith("kernel")
    assert group("libpython3.11.so.1.0") == group("python3.11")
    assert group("loop.cpython-311-x86_64-linux-gnu.so").startswith("uvloop")
    assert group("parser.cpython-311-x86_64-linux-gnu.so").startswith("httptools")
    assert group("somelib.so") == "other: somelib.so"
