"""bench/ab.py's target names: which tree and which interpreter a geogate target runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.ab import ROOT, check_targets, geogate_target, geogate_trees


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
    for bad, why in (("nginx,envoy", "unknown target 'envoy'"), ("nginx,nginx", "once")):
        with pytest.raises(SystemExit) as exc:
            check_targets(ap, bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and err.count("\n") == 2  # usage + line
