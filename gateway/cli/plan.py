"""``geogate plan FILE``: where to put GPUs, before spending (the arithmetic: gateway/plan/).

Prints the placements on the Pareto front of monthly cost against p95 RTT and those that meet
the objectives (``--all``: every placement), and details the cheapest that does; writes
plan.md, plan.json and (with matplotlib) plan.png to ``--out`` when given."""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.cli.charts import use_agg
from gateway.cli.errors import CLIError, OneLineParser
from gateway.cli.files import out_path, output_dir, read_text, writing
from gateway.errors import PlanInvalid, past_limits
from gateway.plan.inputs import BACKEND_RESULTS, PlanInput, parse, section
from gateway.plan.model import Placement, choose
from gateway.plan.search import exhaustive, plan


def add_parser(sub: argparse._SubParsersAction[OneLineParser], said: str) -> None:
    p = sub.add_parser("plan", help=said)
    p.add_argument("file", type=Path, help="plan input (see examples/plan.toml)")
    p.add_argument("--all", action="store_true", help="every placement, not only the front")
    p.add_argument("--out", type=out_path, help="write plan.md, plan.json, plan.png here")


def load(path: Path) -> PlanInput:
    text = read_text(path, "plan")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"plan: {path} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # TOML that passes tomllib's own checks
        raise CLIError(f"plan: {path} is not valid TOML: {past_limits(exc)}") from None
    given = section(doc, "settings").get("backend_results")  # checked: a table, or absent
    # A path in the plan file is the plan file's neighbour; the default is where
    # bench/backend.py writes, from the repository root (the current directory)
    results = path.parent / str(given) if given is not None else Path(BACKEND_RESULTS)
    return parse(doc, lambda: read_results(results))


def read_results(path: Path) -> dict[str, Any]:
    """bench/backend.py's results, for the regions that take their tokens/s from them."""
    try:  # read as any CLI input is; PlanInvalid, as gateway.plan.inputs.parse documents
        text = read_text(
            path,
            "plan",
            "a region takes its tokens_per_s from {path}, which cannot be read ({why}): "
            "run bench/backend.py there, or give tokens_per_s",
        )
    except CLIError as exc:
        raise PlanInvalid(str(exc)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:  # a ValueError too: this first
        raise PlanInvalid(f"plan: {path} is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSON past the parser's limits
        raise PlanInvalid(f"plan: {path} is not JSON: {past_limits(exc)}") from None
    if not isinstance(doc, dict):
        raise PlanInvalid(f"plan: {path} is not bench/backend.py's results (not an object)")
    return doc


def table(placements: list[Placement], continents: list[str]) -> str:
    head = ["placement", "instances", "$/month", "compute", "egress", "storage"]
    head += [f"{c} p50/p95" for c in continents] + ["meets", "pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in placements:
        cols = [
            " + ".join(x.regions),
            " + ".join(str(r.instances) for r in x.lines),
            f"{x.monthly_usd:,.0f}",
            f"{sum(r.compute_usd for r in x.lines):,.0f}",
            f"{sum(r.egress_usd for r in x.lines):,.0f}",
            f"{sum(r.storage_usd for r in x.lines):,.0f}",
        ]
        cols += [f"{x.rtt_p50_ms[c]:.0f} / {x.rtt_p95_ms[c]:.0f}" for c in continents]
        cols += ["yes" if x.meets else "no", "*" if x.pareto else ""]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def detail(x: Placement, p: PlanInput, evaluated: int | None = None) -> str:
    """The chosen placement, line by line. ``evaluated``: how many placements a beam search
    evaluated (None: every subset was), so the choice is only the cheapest of those found."""
    if evaluated is None:
        out = [f"cheapest placement meeting the objectives: {' + '.join(x.regions)}"]
    else:
        out = [
            f"cheapest found meeting the objectives (among the {evaluated:,} placements "
            f"evaluated): {' + '.join(x.regions)}"
        ]
    for r in x.lines:
        out.append(
            f"  {r.id}: {r.instances} x {r.instance} (sized for {r.sized_for}: "
            f"{r.peak_tokens_per_s:,.0f} tokens/s at peak)  compute ${r.compute_usd:,.2f}  "
            f"egress {r.egress_tb:.2f} TB ${r.egress_usd:,.2f}  storage ${r.storage_usd:,.2f}"
            f"  = ${r.total_usd:,.2f}/month"
        )
    out.append(f"  total ${x.monthly_usd:,.2f}/month")
    rates = {c.id: c for c in p.candidates if c.id in x.regions}
    out += [
        f"  {rid}: {c.tokens_per_s:,.0f} tokens/s per instance ({c.tokens_per_s_source})"
        for rid, c in rates.items()
    ]
    ttft = ", ".join(f"{c} {v:.0f} ms" for c, v in x.ttft_ms(p.backend_ttft_ms).items())
    out.append(f"  predicted TTFT p50 per continent: {ttft}")
    return "\n".join(out) + "\n"


def choice(best: Placement | None, p: PlanInput, placements: list[Placement]) -> str:
    """The detail of the chosen placement, or why there is none. Under a beam search "none"
    is about what was evaluated, not about every placement."""
    evaluated = None if exhaustive(p) else len(placements)
    if best is not None:
        return detail(best, p, evaluated)
    if evaluated is None:
        return "no placement meets every objective\n"
    return (
        f"no placement meeting every objective: none found among the {evaluated:,} "
        "evaluated (search budget)\n"
    )


def searched(p: PlanInput, placements: list[Placement]) -> str:
    """Under a beam search, what its table is: not every placement."""
    n = len(p.candidates)
    return (
        f"{n} candidates: {2**n - 1:,} placements, too many to list; a beam search evaluated "
        f"{len(placements):,} (gateway/plan/search.py), so the front is the front of those\n"
    )


def chart(out: Path, placements: list[Placement]) -> Path | None:
    if not use_agg():
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for meets, color in ((False, "tab:gray"), (True, "tab:green")):
        pts = [x for x in placements if x.meets == meets]
        ax.scatter(
            [x.monthly_usd for x in pts],
            [x.overall_p95_ms for x in pts],
            c=color,
            label="meets objectives" if meets else "misses an objective",
        )
    front = sorted((x for x in placements if x.pareto), key=lambda x: x.monthly_usd)
    ax.plot([x.monthly_usd for x in front], [x.overall_p95_ms for x in front], "k--", lw=1)
    for x in front:
        ax.annotate("+".join(x.regions), (x.monthly_usd, x.overall_p95_ms), fontsize=7)
    ax.set_xlabel("monthly cost (USD)")
    ax.set_ylabel("p95 RTT over all demand (ms)")
    ax.set_title("geogate plan: Pareto front of cost against latency")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / "plan.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_command(args: argparse.Namespace) -> None:
    p = load(args.file)
    if args.out:  # before the search: its results are lost if they cannot be written
        output_dir(args.out, "plan")
    placements = plan(p)
    continents = sorted({d.continent for d in p.demand})
    shown = placements if args.all else [x for x in placements if x.pareto or x.meets]
    if not exhaustive(p):
        print(searched(p, placements))
    print(table(shown, continents), end="")
    best = choose(placements)
    print()
    print(choice(best, p, placements), end="")
    if args.out:
        with writing(args.out, "plan"):
            _write(args.out, args.file, p, placements, best)


def header(file: Path, p: PlanInput, placements: list[Placement]) -> str:
    """plan.md's first lines: what was planned, against which objectives, how TTFT is
    predicted, and (beam search) that the table is not every placement."""
    goals = ", ".join(f"{c} {ms:g}" for c, ms in sorted(p.objectives_p95_ms.items()))
    how = "every subset" if exhaustive(p) else "a beam search"
    lines = [
        f"geogate plan {file}: {len(p.candidates)} candidate regions, {how}; "
        f"p95 RTT objectives (ms): {goals or 'none'}; "
        f"predicted TTFT = RTT + the backend's {p.backend_ttft_ms:g} ms",
        "",
    ]
    return "\n".join(lines) + "\n" + ("" if exhaustive(p) else searched(p, placements) + "\n")


def _kind(p: PlanInput) -> str:
    """What the chosen placement is: the cheapest of every subset, or of those found."""
    if exhaustive(p):
        return "cheapest meeting the objectives"
    return "cheapest found meeting the objectives (beam search: not every placement)"


def _write(
    out: Path, file: Path, p: PlanInput, placements: list[Placement], best: Placement | None
) -> None:
    continents = sorted({d.continent for d in p.demand})
    md = header(file, p, placements) + table(placements, continents) + "\n"
    (out / "plan.md").write_text(md + choice(best, p, placements), encoding="utf-8")
    ttft = p.backend_ttft_ms
    doc = {
        "chosen": None if best is None else list(best.regions),
        "choice": None if best is None else _kind(p),
        "predicted_ttft_p50_ms": None if best is None else best.ttft_ms(ttft),
        "objectives_p95_ms": p.objectives_p95_ms,
        "backend_ttft_ms": ttft,
        "search": "every subset" if exhaustive(p) else "beam search",
        "evaluated": len(placements),
        "tokens_per_s": {
            c.id: {"value": c.tokens_per_s, "source": c.tokens_per_s_source} for c in p.candidates
        },
        "placements": [
            asdict(x) | {"monthly_usd": x.monthly_usd, "predicted_ttft_p50_ms": x.ttft_ms(ttft)}
            for x in placements
        ],
    }
    try:  # every figure is finite (gateway/plan/model.py checks them): JSON has no inf or nan
        text = json.dumps(doc, indent=2, allow_nan=False)
    except ValueError as exc:
        raise PlanInvalid(f"plan: plan.json: {exc}") from None
    (out / "plan.json").write_text(text + "\n", encoding="utf-8")
    png = chart(out, placements)
    print(f"\nwritten to {out}/: plan.md, plan.json" + (", plan.png" if png else ""))
