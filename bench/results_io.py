"""Writing a benchmark's results: the markdown table a person reads and the JSON a script reads,
side by side under one prefix (bench/results/NAME.md and NAME.json)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


RESULTS_EXCLUDED = ":(exclude)bench/results"  # git pathspec


def source_tree(root: Path = ROOT) -> dict[str, Any]:
    """The commit a checkout is at and whether it has uncommitted changes to tracked files
    (results under bench/results aside):
    what a result was measured on (None where git or the repository is missing, as for a tree
    unpacked from `git archive`)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    # Not the results: a run writes over the tracked results of the one before it.
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", RESULTS_EXCLUDED)
    return {"commit": commit, "uncommitted_changes": None if changes is None else bool(changes)}


def write_results(
    out: Path,
    lines: list[str],
    doc: dict[str, Any],
    md_tail: str = "",
    trees: Mapping[str, str | Path] | None = None,
) -> None:
    """OUT.md from ``lines`` (+ ``md_tail``), OUT.json from ``doc``, both with the commit they
    were run from (``source_tree``) and, for a run that measured other source trees
    (``trees``: name -> path, as --tree and geogate@PATH give them), each tree's commit where
    it is a git checkout; OUT.json with the time. Prints the table and where both went."""
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.parent.mkdir(parents=True, exist_ok=True)
    tree = source_tree()
    dirty = " (with uncommitted changes)" if tree["uncommitted_changes"] else ""
    stamp = f"\nRun from commit {tree['commit'] or 'unknown'}{dirty}.\n"
    measured: dict[str, dict[str, Any]] = {}
    for name, path in (trees or {}).items():
        t = measured[name] = source_tree(Path(path))
        at = f"commit {t['commit']}" if t["commit"] else "not a git checkout"
        dirty = " (with uncommitted changes)" if t["uncommitted_changes"] else ""
        stamp += f"Tree {name} ({path}): {at}{dirty}.\n"
    md.write_text("\n".join(lines) + "\n" + md_tail + stamp)
    stamped = {**doc, "tree": tree, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if measured:
        stamped["trees_measured"] = measured
    js.write_text(json.dumps(stamped, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {md} and {js.name}")


def params(args: argparse.Namespace) -> dict[str, Any]:
    """A run's command-line arguments for its JSON (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
