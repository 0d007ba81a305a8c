"""bench/compiled_tree.py refuses, in one line and before it builds anything, a folder that
exists and a module that does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "compiled_tree.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_an_existing_folder_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    done = _run(str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"{tmp_path} exists: name a new folder")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_module_not_in_the_tree_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    out = tmp_path / "compiled"
    done = _run(str(out), "--modules", "gateway/http/nope.py")
    assert done.returncode == 2
    assert "no module gateway/http/nope.py at HEAD" in done.stderr.strip().splitlines()[-1]
    assert not out.exists()
