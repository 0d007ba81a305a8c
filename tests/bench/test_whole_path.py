"""bench/whole_path.py: the whole Python stack in process, sockets faked. A run reports only
when every request was answered 200 with exactly the whole answer (a stream: every event,
framed, and its last chunk); anything else fails the run, and a --tree run compares trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "bench" / "whole_path.py")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, SCRIPT, "--requests", "200", "--conc", "4", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(
    "args", [(), ("--tokens", "16"), ("--floor",), ("--floor", "--tokens", "4")]
)
def test_each_stack_is_measured_on_whole_answers(args: tuple[str, ...]) -> None:
    out = _run(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # A request through the whole stack in process costs tens of µs here: far above that is a
    # request that took another path, far below one that did no work.
    assert 2 < got["us_per_request"] < 5000
    assert got["target"] == ("floor" if "--floor" in args else "geogate")


def _fails_with(why: str, tokens: int, *patch: str) -> None:
    """whole_path with ``patch`` (lines run on the module, as ``w``) must fail, saying ``why``,
    and print no figure."""
    code = "\n".join(
        [
            f"import sys; sys.argv = [{SCRIPT!r}, '--requests', '20', '--conc', '2', "
            f"'--tokens', '{tokens}']",
            f"sys.path.insert(0, {str(ROOT)!r})",
            "import bench.whole_path as w",
            *patch,
            "w.main()",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode != 0
    assert why in out.stderr
    assert "us_per_request" not in out.stdout


def test_an_upstream_that_fails_fails_the_run() -> None:
    # The fake upstream answers 503 to everything: geogate answers the client 503 in turn.
    _fails_with("not a 200", 0, "w.OK_HEAD = b'HTTP/1.1 503 Service Unavailable'")


def test_a_stream_cut_short_fails_the_run() -> None:
    # The fake upstream ends the stream after its role chunk: the client's bytes are not the
    # whole stream, so no figure may come out (and the run must not hang).
    _fails_with(
        "not the whole answer",
        4,
        "real, whole = w.events, w._expected(4)",  # the client still expects all of it
        "w._expected = lambda n: whole",
        "w.events = lambda n: real(n)[:1]",
    )


def test_trees_are_compared_in_turns(tmp_path: Path) -> None:
    out = _run("--tree", "a=.", "--tree", f"b={ROOT}", "--rounds", "2", "--out", f"{tmp_path}/t")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((tmp_path / "t.json").read_text())
    assert set(doc["us"]) == {"a", "b"} and all(len(v) == 2 for v in doc["us"].values())
    assert "| a |" in (tmp_path / "t.md").read_text()
