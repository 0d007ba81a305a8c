#!/usr/bin/env python3
"""What a generated token's text costs the engine: decoding every token again (the engine
before backend/detok.py) against decoding a window (backend.detok.Detokenizer).

For sequences of N tokens (the project's byte-level tokenizer on English text), the cost of
the N-th token's text both ways, median of --repeat timings each; and what that is for a
decode step of 16 such sequences, the engine's batch. Run: .venv/bin/python bench/detok.py
Writes bench/results/detok.{md,json} (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.detok import Detokenizer  # noqa: E402
from backend.tiny import make_tiny_model  # noqa: E402

LENGTHS = (256, 1024, 4096)
BATCH = 16
TEXT = "Geogate routes every request to the nearest healthy region, and retries. "


def per_token_us(tok: Any, ids: list[int], n: int, repeat: int) -> tuple[float, float]:
    """(whole decode, window) µs for the n-th token's text."""
    whole = []
    for _ in range(repeat):
        t = time.perf_counter()
        tok.decode(ids[:n], skip_special_tokens=True)
        whole.append(time.perf_counter() - t)
    window = []
    for _ in range(repeat):
        d = Detokenizer(tok)
        for token in ids[: n - 1]:  # the window where it stands before the n-th token
            d.add(token)
        t = time.perf_counter()
        d.add(ids[n - 1])
        window.append(time.perf_counter() - t)
    return statistics.median(whole) * 1e6, statistics.median(window) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        make_tiny_model(Path(d))
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    ids = tok(TEXT * 400, add_special_tokens=False)["input_ids"]
    rows = []
    for n in LENGTHS:
        whole, window = per_token_us(tok, ids, n, args.repeat)
        rows.append({"tokens": n, "whole_us": round(whole, 1), "window_us": round(window, 1)})
    doc = {"machine": f"{platform.machine()}, Python {platform.python_version()}", "rows": rows}
    doc["command"] = " ".join(["bench/detok.py", *sys.argv[1:]])
    lines = [
        "# A generated token's text: all tokens decoded again, or a window (bench/detok.py)",
        "",
        f"{doc['machine']}; `{doc['command']}`; the project's byte-level tokenizer, English text; "
        f"median of {args.repeat}. Per step: {BATCH} sequences of that length, the engine's batch.",
        "",
        "| tokens so far | whole decode µs | window µs | whole, ms a step | window, ms a step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        w, k = r["whole_us"], r["window_us"]
        lines.append(
            f"| {r['tokens']} | {w} | {k} | {w * BATCH / 1000:.2f} | {k * BATCH / 1000:.3f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detok.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "detok.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
