"""bench/perf_frames.py: perf's call chains read back to the innermost Python function."""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import pytest

from bench.perf_frames import (
    NO_FRAME,
    by_function,
    by_layer,
    clear_maps,
    frame_targets,
    function_name,
    innermost,
    leaf_kind,
    report,
    summary,
    tally,
)

# `perf script --no-inline -F ip,sym,dso` of three samples, as perf prints them: one under a
# Python function's C call (a transport write, in the kernel), one in the interpreter under a
# nested function (the trampoline map names it; this one with the header line perf prints
# when asked for more fields), and one in the event loop with no Python frame.
SCRIPT = """
\tffffffff81e2eed9 sock_write_iter ([kernel.kallsyms])
\t           f838f __GI___libc_write (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          1548bd __pyx_pw_6uvloop_4loop_8UVStream_5write (/venv/site-packages/uvloop/loop.so)
\t          110811 _PyEval_EvalFrameDefault (/usr/lib/libpython3.12.so.1.0)
\t    7fad1b5a4457 py::_piped.<locals>.sink:/src/tree/gateway/http/relay.py (/tmp/perf-66.map)
\t    7fad1b5a21f7 py::Conn.data_received:/src/tree/gateway/client/conn.py (/tmp/perf-66.map)


python3.12    66 [000]  1.2:     500250 cpu-clock:
\t          110811 _PyEval_EvalFrameDefault (/usr/lib/libpython3.12.so.1.0)
\t    7fad1b5a4457 py::_piped.<locals>.sink:/src/tree/gateway/http/relay.py (/tmp/perf-66.map)


\t          108cae epoll_pwait (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          15c01b uv__io_poll (/venv/site-packages/uvloop/loop.so)
\tffffffffffffffff [unknown] ([unknown])

"""
SINK = "_piped.<locals>.sink (gateway/http/relay.py)"


def test_each_sample_goes_to_its_innermost_python_function_by_the_kind_of_its_leaf() -> None:
    found = tally(SCRIPT)
    assert found == collections.Counter(
        {(SINK, "kernel"): 1, (SINK, "interpreter"): 1, (NO_FRAME, "native"): 1}
    )


def test_the_innermost_frame_wins_over_its_callers() -> None:
    frames = [
        ("_PyEval_EvalFrameDefault", "/usr/lib/libpython3.12.so.1.0"),
        ("py::inner:/t/gateway/h1/conn.py", "/tmp/perf-1.map"),
        ("py::outer:/t/gateway/h1/server.py", "/tmp/perf-1.map"),
    ]
    assert innermost(frames) == "inner (gateway/h1/conn.py)"
    assert innermost(frames[:1]) == NO_FRAME


def test_leaves_are_the_kernel_the_interpreter_or_other_native_code() -> None:
    assert leaf_kind("[kernel.kallsyms]") == "kernel"
    assert leaf_kind("/usr/lib/libpython3.12.so.1.0") == "interpreter"
    assert leaf_kind("/tmp/perf-12.map") == "interpreter"  # a trampoline
    assert leaf_kind("/usr/bin/python3.12") == "interpreter"
    assert leaf_kind("/venv/lib/python3.12/site-packages/uvloop/loop.so") == "native"
    assert leaf_kind("/usr/lib/x86_64-linux-gnu/libc.so.6") == "native"


def test_functions_are_named_from_any_tree_and_from_the_library() -> None:
    assert function_name("H1.run", "/tmp/base9/gateway/h1/conn.py") == "H1.run (gateway/h1/conn.py)"
    lib = "/root/.pyenv/versions/3.12.1/lib/python3.12/asyncio/runners.py"
    assert function_name("Runner.run", lib) == "Runner.run (asyncio/runners.py)"
    pkg = "/venv/lib/python3.12/site-packages/prometheus_client/metrics.py"
    assert function_name("inc", pkg) == "inc (prometheus_client/metrics.py)"
    assert function_name("f", "/usr/lib/python3.12/ipaddress.py") == "f (ipaddress.py)"


def test_figures_per_function_and_layer_are_samples_times_what_one_stands_for() -> None:
    found = tally(SCRIPT)
    rows = by_function(found, 2.0)
    assert rows[0] == {
        "function": SINK,
        "samples": 2,
        "us": 4.0,
        "kernel": 2.0,
        "interpreter": 2.0,
        "native": 0.0,
    }
    assert [r["function"] for r in rows] == [SINK, NO_FRAME]
    assert by_layer(found, 2.0) == {"gateway/http": 4.0, NO_FRAME: 2.0}
    text = "\n".join(
        report("geogate%py", {"by_layer": by_layer(found, 2.0), "by_function": rows}, "stream")
    )
    assert f"| `{SINK}` | 4 | 2 | 2 | 0 |" in text
    assert "µs per stream" in text


def test_no_target_on_3_12_or_later_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("this checks the refusal on an interpreter without perf trampolines")
    ap = argparse.ArgumentParser(prog="perf_split")
    with pytest.raises(SystemExit) as stop:
        frame_targets(ap, ["nginx", "geogate"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no geogate target runs on CPython 3.12 or later" in err


def test_maps_are_kept_where_asked_and_removed(tmp_path: Path) -> None:
    pid = 4_000_000 + os.getpid()  # above any pid_max: no process of that number writes one
    m = Path(f"/tmp/perf-{pid}.map")
    m.write_text("7fad1b5a4457 b py::f:/t/gateway/x.py\n")
    try:
        keep = tmp_path / "keep"
        clear_maps([pid, pid + 1], keep)  # one without a map: skipped
        assert not m.exists()
        assert (keep / m.name).read_text().startswith("7fad1b5a4457")
    finally:
        m.unlink(missing_ok=True)


def test_a_split_is_only_for_targets_with_samples() -> None:
    assert summary(collections.Counter(), 1.0) == {}
    assert set(summary(tally(SCRIPT), 1.0)) == {"by_function", "by_layer"}
