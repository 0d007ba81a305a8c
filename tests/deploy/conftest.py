"""The deploy/ checks run real offline tools: `scripts/dev test` installs them when missing
(promtool and docker-compose from Debian, checkov into .venv-checkov)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str, path: Path | None = None) -> str:
    """The tool's path; a clear failure (not a skip) when it is missing, so CI cannot pass
    without having run the check."""
    found = str(path) if path is not None and path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: scripts/dev test installs it")
    return found
