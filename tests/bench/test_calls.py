"""bench/calls.py: Python calls per stream, counted on a real server, sim-backend and load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.calls import FLOOR, run_target

ROOT = Path(__file__).resolve().parents[2]


def test_geogate_runs_more_python_per_stream_than_the_floor_under_it() -> None:
    ours, floor = run_target("geogate", 1.0, 2), run_target(FLOOR, 1.0, 2)
    for r in (ours, floor):
        assert r["streams"] > 0
        assert 0 < r["python_calls"] < r["calls"]
        assert r["profiled_us"] > 0 and r["top"]
    # geogate is the floor plus its own code (routing, metrics, access line...): more calls.
    assert floor["python_calls"] + 50 < ours["python_calls"] < 10 * floor["python_calls"]
    # which functions ran is exact; the top by own time is not (a busy machine reorders it)
    assert any(f.startswith("gateway/http/intake.py") for f in ours["functions"])
    assert not any(f.startswith("gateway/http/intake.py") for f in floor["functions"])


@pytest.mark.parametrize(
    ("targets", "said"),
    [
        ("nginx", "'nginx' is not geogate, geogate@PATH or floor-splice"),
        ("floor-splice@/tmp", "'floor-splice@/tmp' is not geogate, geogate@PATH or floor-splice"),
        ("geogate@/no/such/dir", "/no/such/dir is not a geogate source tree"),
    ],
)
def test_a_bad_target_is_one_line(targets: str, said: str) -> None:
    out = subprocess.run(
        [sys.executable, "bench/calls.py", "--targets", targets],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert said in out.stderr
    assert "Traceback" not in out.stderr
