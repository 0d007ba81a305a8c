"""bench/results_io.py: every result names the commit it was run from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.results_io import ROOT, write_results


def test_a_result_names_its_commit_and_whether_the_tree_had_changes(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    write_results(tmp_path / "r", ["# r", "", "| a |", "|---|"], {"x": 1})
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["x"] == 1 and doc["tree"]["commit"] == head
    assert isinstance(doc["tree"]["uncommitted_changes"], bool)
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# r\n") and f"Run from commit {head}" in md
    assert md.rstrip().endswith("(with uncommitted changes).") == doc["tree"]["uncommitted_changes"]


def test_a_result_names_each_tree_it_measured(tmp_path: Path) -> None:
    unpacked = tmp_path / "archive"  # as `git archive | tar -x` leaves a tree: no repository
    unpacked.mkdir()
    write_results(tmp_path / "r", ["# r"], {}, trees={"now": ROOT, "before": unpacked})
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["trees_measured"]["now"]["commit"] == doc["tree"]["commit"]
    assert doc["trees_measured"]["before"]["commit"] is None
    md = (tmp_path / "r.md").read_text()
    assert f"Tree now ({ROOT}): commit {doc['tree']['commit']}" in md
    assert f"Tree before ({unpacked}): not a git checkout." in md


def test_results_written_over_do_not_count_as_changes_but_code_does(tmp_path: Path) -> None:
    from bench.results_io import source_tree

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "bench" / "results" / "r.md").write_text("new\n")
    assert source_tree(tmp_path)["uncommitted_changes"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_tree(tmp_path)["uncommitted_changes"] is True
