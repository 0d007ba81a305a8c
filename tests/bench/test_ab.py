"""bench/ab.py's target names: which tree and which interpreter a geogate target runs."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ab import ROOT, check_targets, geogate_target, geogate_trees, interpreters


def test_a_geogate_target_names_its_tree_and_its_interpreter(tmp_path: Path) -> None:
    assert geogate_target("geogate") == (ROOT.resolve(), None)
    assert geogate_target(f"geogate@{tmp_path}") == (tmp_path.resolve(), None)
    assert geogate_target("geogate%/opt/py312/bin/python") == (
        ROOT.resolve(),
        "/opt/py312/bin/python",
    )
    both = f"geogate@{tmp_path}%/opt/py/bin/python"
    assert geogate_target(both) == (tmp_path.resolve(), "/opt/py/bin/python")
    # Only other trees are stamped in the results, by their path, not the interpreter's.
    trees = geogate_trees(["geogate", "geogate%/opt/py/bin/python", both])
    assert trees == {both: str(tmp_path.resolve())}


def test_an_unknown_or_repeated_target_is_one_line_from_argparse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ap = argparse.ArgumentParser(prog="ab.py")
    assert check_targets(ap, "nginx,geogate,geogate%/x/python") == [
        "nginx",
        "geogate",
        "geogate%/x/python",
    ]
    bad_names = (
        ("nginx,envoy", "unknown target 'envoy'"),
        ("geogatex", "unknown target 'geogatex'"),
        ("geogate%", "unknown target 'geogate%'"),
        ("geogate@", "unknown target 'geogate@'"),
        ("nginx,nginx", "once"),
    )
    for bad, why in bad_names:
        with pytest.raises(SystemExit) as exc:
            check_targets(ap, bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and err.count("\n") == 2  # usage + line


def test_a_relative_interpreter_is_made_absolute_and_its_version_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    # From here, not from the tree the target starts in; a venv's link is kept, not resolved.
    assert geogate_target("geogate%venv/bin/python")[1] == str(tmp_path / "venv/bin/python")
    versions = interpreters(["nginx", "geogate", f"geogate%{sys.executable}"])
    want = platform.python_version()
    assert versions == {"geogate": want, f"geogate%{sys.executable}": want}


def test_an_interpreter_that_cannot_run_stops_the_run_before_any_measuring(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "ab.py"), "--targets", "nginx,geogate%/no/python"]
    cmd += ["--out", str(tmp_path / "ab")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "interpreter did not run" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_an_interpreter_without_geogates_dependencies_is_refused_up_front(tmp_path: Path) -> None:
    bare = tmp_path / "python"  # this interpreter with no site-packages: no starlette, no uvloop
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    cmd = [sys.executable, str(ROOT / "bench" / "ab.py"), "--targets", f"nginx,geogate%{bare}"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "ab")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "No module named" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--targets", "nginx,geogate@{tmp}"], "imports geogate from"),  # no geogate in that tree
        (["--targets", "nginx", "--rounds", "0"], "--rounds must be above 0, not 0"),
        (["--targets", "nginx", "--idle", "-1"], "--idle must be above 0, not -1.0"),
        (["--targets", "nginx", "--window", "0"], "--window must be above 0, not 0.0"),
    ],
)
def test_a_bad_option_or_an_empty_tree_is_one_line_before_anything_starts(
    tmp_path: Path, args: list[str], why: str
) -> None:
    empty = tmp_path / "tree"
    empty.mkdir()
    cmd = [sys.executable, str(ROOT / "bench" / "ab.py"), "--out", str(tmp_path / "ab")]
    cmd += [a.replace("{tmp}", str(empty)) for a in args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert why in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "ab.md").exists()


def test_the_report_pairs_each_round_with_the_first_targets(tmp_path: Path) -> None:
    """Besides the medians, each round's ratio to the first target: how far the ratio itself
    moves from round to round in one sitting."""
    from bench.ab import report

    args = argparse.Namespace(
        mode="non-streaming", conc=16, requests=100, rounds=3, idle=3.0, out=tmp_path / "ab"
    )
    per_round = {"nginx": [100.0, 200.0, 100.0], "geogate": [130.0, 240.0, 150.0]}
    idle = {"nginx": 0.0, "geogate": 1.0}
    report(args, ["nginx", "geogate"], per_round, per_round, idle, True, {}, True, {})
    md = (tmp_path / "ab.md").read_text()
    assert "Each round's ratio to nginx, median (range): geogate 1.30 (1.20 to 1.50)." in md
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert doc["ratio_per_round"] == {"geogate": [1.3, 1.2, 1.5]}


def test_one_target_or_a_round_without_cpu_still_reports(tmp_path: Path) -> None:
    from bench.ab import report

    args = argparse.Namespace(
        mode="non-streaming", conc=16, requests=100, rounds=2, idle=3.0, out=tmp_path / "ab"
    )
    report(
        args,
        ["nginx"],
        {"nginx": [100.0, 0.0]},
        {"nginx": [100.0, 0.0]},
        {"nginx": 0.0},
        True,
        {},
        True,
        {},
    )
    assert "Each round's ratio" not in (tmp_path / "ab.md").read_text()
    per_round = {"nginx": [0.0, 200.0], "geogate": [130.0, 240.0]}
    report(
        args,
        ["nginx", "geogate"],
        per_round,
        per_round,
        {"nginx": 0.0, "geogate": 0.0},
        True,
        {},
        True,
        {},
    )
    assert "geogate 1.20 (1.20 to 1.20)." in (tmp_path / "ab.md").read_text()
