"""bench/own_path.py: the in-process request path measures a proxied request answered 200 in
whole, and refuses to report a run whose requests were not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.own_path import run_tree

ROOT = Path(__file__).resolve().parents[2]


def test_this_tree_is_measured_on_whole_answers() -> None:
    us = run_tree(ROOT, 200, 0)
    # A proxied request in process costs tens of µs on this machine; far above that is a
    # request that took another path (a timeout, a retry), far below one that did no work.
    assert 1 < us < 5000


def test_a_run_whose_upstream_fails_reports_nothing() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path;"
        "import bench.own_path as o; o.FakeResponse.status = 503;"
        f"o.child(Path({str(ROOT)!r}), 20, 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "not every request was answered 200 in whole" in out.stderr
    assert '"us"' not in out.stdout


def test_a_stream_is_measured_whole() -> None:
    # 16 tokens piped: the role chunk, the tokens and [DONE] must all reach the client (the
    # child counts the bytes and fails the run otherwise), within the same sane range.
    assert 1 < run_tree(ROOT, 200, 16) < 5000


def test_a_stream_cut_short_reports_nothing() -> None:
    # The upstream's chunks after the first never reach the sink: the bytes do not add up.
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path\n"
        "import bench.own_path as o\n"
        "async def cut(self, sink): return None\n"
        "o.FakeResponse.drain_to = cut\n"
        f"o.child(Path({str(ROOT)!r}), 20, 4)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "not every request was answered 200 in whole" in out.stderr


def test_each_request_after_an_eviction_is_timed_alone_and_checked_whole() -> None:
    # 1 MiB written before each request: still answered whole (the child checks), still in
    # the same sane range as the hot loop's figure.
    assert 1 < run_tree(ROOT, 100, 16, 1 << 20) < 5000


def test_a_negative_eviction_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "bench/own_path.py", "--evict", "-1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "--evict must be 0 or more bytes, not -1" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_caches_are_recorded_as_linux_names_them() -> None:
    from bench.own_path import caches

    found = caches()
    assert all(k.startswith("L") and v for k, v in found.items())
    if Path("/sys/devices/system/cpu/cpu0/cache/index0").is_dir():
        assert any(k.startswith("L1 ") for k in found)
