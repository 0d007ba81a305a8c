#!/usr/bin/env python3
"""geogate's distance model (geodb.distance.est_rtt_ms) against the published inter-region
RTTs that ship with it (geodb/data/aws-inter-region-rtt-2017.csv): every pair, the published
figure (both directions averaged where both are listed), the model's estimate, the error.
No network, no timing: arithmetic on the shipped file, so it is the same on every machine.

  .venv/bin/python bench/rtt_model.py      # writes bench/results/rtt_model.{md,json}
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geodb.distance import RTT_FIXED_MS, RTT_MS_PER_KM, great_circle_km  # noqa: E402
from geodb.published_rtt import AWS_2017, aws_2017, median_abs_rel, model_errors  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    table = aws_2017()
    errors = sorted(model_errors(table), key=lambda e: e.rel)
    rels = [e.rel for e in errors]
    summary = {
        "pairs": len(errors),
        "median_abs_error": round(median_abs_rel(errors), 4),
        "max_abs_error": round(max(abs(r) for r in rels), 4),
        "mean_signed_error": round(statistics.mean(rels), 4),
        "within_25pct": sum(abs(r) <= 0.25 for r in rels),
        "within_35pct": sum(abs(r) <= 0.35 for r in rels),
    }
    rows: list[dict[str, Any]] = []
    for e in errors:
        a, b = table.regions[e.src], table.regions[e.dst]
        km = great_circle_km(a.latitude, a.longitude, b.latitude, b.longitude)
        rows.append(
            {
                "pair": f"{e.src} - {e.dst}",
                "km": round(km),
                "published_ms": round(e.published_ms, 1),
                "model_ms": round(e.model_ms, 1),
                "error": round(e.rel, 4),
            }
        )
    model = f"{RTT_FIXED_MS:g} + {RTT_MS_PER_KM:g} x km"
    lines = [
        "# The distance model against published inter-region RTTs",
        "",
        f"`.venv/bin/python bench/rtt_model.py`. Published: `geodb/data/{AWS_2017}` (average "
        "RTT between AWS regions, 2017; source and gaps in its header), both directions "
        f"averaged where both are listed. Model: `geodb.distance.est_rtt_ms` ({model}).",
        "",
        f"{summary['pairs']} pairs: median |error| {summary['median_abs_error']:.1%}, worst "
        f"{summary['max_abs_error']:.1%}, mean signed {summary['mean_signed_error']:+.1%}; "
        f"{summary['within_25pct']} within 25 %, {summary['within_35pct']} within 35 %. "
        "Negative: the model is faster than the published path.",
        "",
        "| pair | great-circle km | published ms | model ms | error |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['km']:,} | {r['published_ms']:.1f} | {r['model_ms']:.1f} "
            f"| {r['error']:+.1%} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rtt_model.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "rtt_model.json").write_text(
        json.dumps({"summary": summary, "pairs": rows}, indent=1) + "\n", encoding="utf-8"
    )
    print("\n".join(lines[:5]))
    print(f"written to {RESULTS}/rtt_model.{{md,json}}")


if __name__ == "__main__":
    main()
