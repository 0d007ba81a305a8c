#!/usr/bin/env python3
"""Added latency at low concurrency, in alternating rounds: what issue 14's "added latency p50
<= 0.3 ms at c = 1" is judged by, measured so that two trees can be told apart.

bench/overhead.py measures each target's p50 in one cell, once, and on this VM a sitting moves
a target's p50 by more than the gap between two trees (round nine: +0.35 ms kept, +0.28 the same
day). Here every target, ``direct`` (the sim-backend itself) among them, takes ``--rounds``
turns of ``--requests`` non-streaming requests at ``--conc`` (h2load, with its per-request log),
the order reversed each round, as bench/ab.py's rounds are; round 0 warms every target up and
is not counted. A target's added latency in a round is its p50 less direct's p50 in the same
round: the backend's own time, and the drift of the VM from round to round, fall out.

  .venv/bin/python bench/latency_ab.py --targets direct,nginx,floor-h1,geogate[,geogate@TREE] \\
      [--conc 1] [--requests 4000] [--rounds 7] [--tokens 16] [--out bench/results/latency_ab]

Writes OUT.md and OUT.json: per target each round's p50 and p99 (ms) and the added p50, and
their medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ab import (  # noqa: E402
    DIRECT,
    check_positive,
    check_targets,
    geogate_trees,
    in_turn,
    interpreters,
    requests,
    rig,
)
from bench.overhead import TOKENS  # noqa: E402
from bench.overhead_cells import latencies_ms, pct  # noqa: E402
from bench.results_io import params, write_results  # noqa: E402


def added(p50s: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each target's p50 less direct's in the same round (empty without direct)."""
    base = p50s.get(DIRECT)
    if base is None:
        return {}
    return {
        t: [round(a - b, 3) for a, b in zip(rs, base, strict=True)]
        for t, rs in p50s.items()
        if t != DIRECT
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="direct,nginx,floor-h1,geogate")
    ap.add_argument("--conc", type=int, default=1)
    ap.add_argument("--requests", type=int, default=4000, help="per target per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=TOKENS, help="per answer")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_ab")
    args = ap.parse_args()
    targets = check_targets(ap, args.targets, direct=True)
    check_positive(ap, args, "conc", "requests", "rounds", "tokens")
    try:  # an interpreter that cannot run stops here, in one line
        versions = interpreters(targets)
    except (OSError, subprocess.TimeoutExpired) as exc:
        ap.error(f"a geogate target's interpreter did not run: {exc}")
    p50s: dict[str, list[float]] = {t: [] for t in targets}
    p99s: dict[str, list[float]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory() as tmp, rig(targets, False, args.tokens, 1.0) as rigged:
        body, ports = rigged
        for r in range(args.rounds + 1):
            for target, (port, _tree) in in_turn(ports, r):
                log = Path(tmp) / f"{r}.log"
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                requests(url, body, args.requests, args.conc, log)
                lat = latencies_ms(log)
                log.unlink()
                if r:  # round 0 warms every target up
                    p50s[target].append(round(pct(lat, 0.5), 3))
                    p99s[target].append(round(pct(lat, 0.99), 3))
    report(args, targets, p50s, p99s, versions)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def report(
    args: argparse.Namespace,
    targets: list[str],
    p50s: dict[str, list[float]],
    p99s: dict[str, list[float]],
    versions: dict[str, str],
) -> None:
    more = added(p50s)
    lines = [
        "# Added latency, alternating rounds (bench/latency_ab.py)",
        "",
        f"Non-streaming, HTTP/1.1, c = {args.conc}, {args.requests} requests per target per "
        f"round (h2load), {args.tokens} tokens per answer, {args.rounds} rounds after a warm-up "
        "round, the order reversed each round; proxies on CPU 0, sim-backend and h2load on "
        "CPU 1. Added: a target's p50 less direct's (the sim-backend itself) in the same round.",
        "",
        "| target | p50 ms (median of rounds) | added p50 ms (median) | added p50, each round "
        "| p99 ms (median) |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        each = more.get(t, [])
        lines.append(
            f"| {t} | {_median(p50s[t]):.3f} | "
            + (f"**{_median(each):+.3f}**" if each else "-")
            + " | "
            + (", ".join(f"{a:+.3f}" for a in each) if each else "-")
            + f" | {_median(p99s[t]):.3f} |"
        )
    results: dict[str, Any] = {
        t: {
            "p50_ms_each_round": p50s[t],
            "p99_ms_each_round": p99s[t],
            "p50_ms": _median(p50s[t]),
            "p99_ms": _median(p99s[t]),
            **(
                {"added_p50_ms_each_round": more[t], "added_p50_ms": _median(more[t])}
                if t in more
                else {}
            ),
        }
        for t in targets
    }
    doc = {"params": params(args), "python": versions, "results": results}
    write_results(args.out, lines, doc, trees=geogate_trees(targets))


if __name__ == "__main__":
    main()
