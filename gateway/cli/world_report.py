"""``geogate world``'s numbers: per-request samples in, the table (markdown, JSON) and the chart
out. No processes here: the runner (world.py) measures, this module only summarises."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.charts import use_agg
from gateway.cli.errors import CLIError

TOPOLOGIES = {
    "origin": "(a) one origin",
    "dns": "(b) DNS nearest region",
    "geogate": "(c) geogate edge",
}


def labels(origin: str) -> dict[str, str]:
    """Each topology's name in the table and the chart: (a) named after its region (--origin),
    which need not be the European one."""
    return TOPOLOGIES | {"origin": f"{TOPOLOGIES['origin']} ({origin})"}


@dataclass(frozen=True)
class Sample:
    phase: str
    topology: str
    site: str
    continent: str
    t_s: float  # since the phase's event (negative: before it)
    ok: bool
    ttft_ms: float | None
    total_ms: float | None
    region: str


@dataclass
class Cell:
    n: int
    failed: int
    p50: float | None
    p95: float | None
    ratio: float | None  # p50 over the physical floor
    total_p50: float | None = None  # the whole stream, last token included


@dataclass
class SiteRow:
    site: str
    continent: str
    floor_ms: float
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class EventRow:
    event: str
    region: str
    topology: str
    failed: int
    failed_before_first_byte: int
    moved_after_s: float | None  # None: traffic never left the region (or was never on it)
    affected_sites: list[str]
    ttft_p50_by_continent: dict[str, float | None]


def interpolated_percentile(values: list[float], pct: int) -> float | None:
    """The ``pct``-th percentile (1..99) of ``values`` in any order, interpolated between
    samples (statistics.quantiles, inclusive); None when empty. Not the convention of the
    dashboard's ``window.percentile`` (nearest rank, ``q`` in 0..1)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def cell(samples: list[Sample], floor_ms: float) -> Cell:
    ttfts = [s.ttft_ms for s in samples if s.ok and s.ttft_ms is not None]
    p50 = interpolated_percentile(ttfts, 50)
    return Cell(
        n=len(samples),
        failed=sum(not s.ok for s in samples),
        p50=p50,
        p95=interpolated_percentile(ttfts, 95),
        ratio=None if p50 is None else p50 / floor_ms,
        total_p50=interpolated_percentile(
            [s.total_ms for s in samples if s.ok and s.total_ms is not None], 50
        ),
    )


def site_rows(samples: list[Sample], floors: dict[str, float], phase: str) -> list[SiteRow]:
    rows = []
    for site, floor in floors.items():
        mine = [s for s in samples if s.site == site and s.phase == phase]
        if not mine:
            continue
        row = SiteRow(site, mine[0].continent, floor)
        for topo in TOPOLOGIES:
            row.cells[topo] = cell([s for s in mine if s.topology == topo], floor)
        rows.append(row)
    return rows


def moved_after(samples: list[Sample], region: str, sites: set[str]) -> float | None:
    """Seconds from the event until every later request from the affected sites succeeded
    somewhere other than ``region``; None when that never happened within the phase."""
    after = sorted((s for s in samples if s.t_s >= 0 and s.site in sites), key=lambda s: s.t_s)
    last_bad = None
    for s in after:
        if not s.ok or s.region == region:
            last_bad = s.t_s
    if not after or (last_bad is not None and last_bad == after[-1].t_s):
        return None
    return 0.0 if last_bad is None else last_bad


def event_rows(
    samples: list[Sample], event: str, region: str, home: dict[str, dict[str, str]]
) -> list[EventRow]:
    """``home[topology][site]``: the region each site used before the event."""
    rows = []
    for topo in TOPOLOGIES:
        mine = [s for s in samples if s.phase == event and s.topology == topo]
        sites = {site for site, r in home[topo].items() if r == region}
        during = [s for s in mine if s.t_s >= 0]
        by_cont: dict[str, float | None] = {}
        for cont in sorted({s.continent for s in mine}):
            vals = [s.ttft_ms for s in during if s.continent == cont and s.ok and s.ttft_ms]
            by_cont[cont] = interpolated_percentile([v for v in vals if v is not None], 50)
        failed = [s for s in during if not s.ok]
        rows.append(
            EventRow(
                event=event,
                region=region,
                topology=topo,
                failed=len(failed),
                failed_before_first_byte=sum(s.ttft_ms is None for s in failed),
                moved_after_s=moved_after(mine, region, sites) if sites else None,
                affected_sites=sorted(sites),
                ttft_p50_by_continent=by_cont,
            )
        )
    return rows


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(rows: list[SiteRow], events: list[EventRow], origin: str, intro: str = "") -> str:
    """The tables, after ``intro`` (what was run: world_run.intro)."""
    names = labels(origin)
    head = ["site", "cont.", "floor ms"]
    for name in names.values():
        head += [f"{name} p50/p95 ms", "x floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cols = [r.site, r.continent, _ms(r.floor_ms)]
        for topo in TOPOLOGIES:
            c = r.cells[topo]
            fail = f" ({c.failed} failed)" if c.failed else ""
            ratio = "-" if c.ratio is None else f"{c.ratio:.2f}"
            cols += [f"{_ms(c.p50)} / {_ms(c.p95)}{fail}", ratio]
        lines.append("| " + " | ".join(cols) + " |")
    if events:
        conts = sorted({c for e in events for c in e.ttft_p50_by_continent})
        lines += [
            "",
            "| event | topology | failed (before 1st byte) | traffic moved after | "
            + " | ".join(f"TTFT p50 {c}" for c in conts)
            + " |",
            "|" + "---|" * (4 + len(conts)),
        ]
        for e in events:
            moved = (
                "not affected"
                if not e.affected_sites
                else ("never" if e.moved_after_s is None else f"{e.moved_after_s:.2f} s")
            )
            cols = [
                f"{e.event} ({e.region})",
                names[e.topology],
                f"{e.failed} ({e.failed_before_first_byte})",
                moved,
            ] + [_ms(e.ttft_p50_by_continent.get(c)) for c in conts]
            lines.append("| " + " | ".join(cols) + " |")
    return (intro + "\n" if intro else "") + "\n".join(lines) + "\n"


def write(
    out: Path, rows: list[SiteRow], events: list[EventRow], meta: dict[str, Any], md: str
) -> None:
    """world.md (``md``: markdown()'s), world.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.md").write_text(md, encoding="utf-8")
    doc = {"meta": meta, "sites": [asdict(r) for r in rows], "events": [asdict(e) for e in events]}
    try:  # no NaN or Infinity: they are not JSON (every figure here is a finite time)
        text = json.dumps(doc, indent=2, allow_nan=False)
    except ValueError as exc:
        raise CLIError(f"world: world.json: {exc}") from None
    (out / "world.json").write_text(text + "\n", encoding="utf-8")


def chart(out: Path, rows: list[SiteRow], origin: str) -> Path | None:
    """TTFT p50 per site per topology, with the floor; None when matplotlib is not installed
    (it is an optional extra: ``pip install geogate[charts]``)."""
    if not use_agg():
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / (len(TOPOLOGIES) + 1)
    xs = range(len(rows))
    for i, (topo, name) in enumerate(labels(origin).items()):
        ys = [r.cells[topo].p50 or 0.0 for r in rows]
        ax.bar([x + i * width for x in xs], ys, width, label=name)
    floors = [r.floor_ms for r in rows]
    ax.bar([x + len(TOPOLOGIES) * width for x in xs], floors, width, label="physical floor")
    ax.set_xticks([x + width * len(TOPOLOGIES) / 2 for x in xs])
    ax.set_xticklabels([f"{r.site}\n({r.continent})" for r in rows])
    ax.set_ylabel("TTFT p50 (ms)")
    ax.set_title("geogate world: time to first token per client site")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / "world.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
