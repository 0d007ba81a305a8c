"""Writing a benchmark's results: the markdown table a person reads and the JSON a script reads,
side by side under one prefix (bench/results/NAME.md and NAME.json)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def write_results(out: Path, lines: list[str], doc: dict[str, Any], md_tail: str = "") -> None:
    """OUT.md from ``lines`` (+ ``md_tail``), OUT.json from ``doc`` with the time it was
    written; prints the table and where both went."""
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n" + md_tail)
    stamped = {**doc, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    js.write_text(json.dumps(stamped, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {md} and {js.name}")


def params(args: argparse.Namespace) -> dict[str, Any]:
    """A run's command-line arguments for its JSON (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
