"""``geogate world``'s run: start the world, measure the steady state and the events with a
progress bar, write the table (markdown, JSON) and the chart."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.progress import Progress

from gateway.cli import world_checks as wcheck
from gateway.cli import world_report as wr
from gateway.cli.errors import CLIError, OneLineParser
from gateway.cli.files import out_path, output_dir, read_text, writing
from gateway.cli.procs import interruptible
from gateway.cli.workdir import work_folder
from gateway.cli.world import (
    DEFAULT_REGIONS,
    LEAD_S,
    PACE_S,
    SITES,
    Table,
    World,
    WorldSpec,
    event_phase,
    event_regions,
    nearest,
    rtt,
    steady,
)
from gateway.cli.world_backends import BACKENDS, KINDS, check_events
from gateway.cli.world_client import Site, backend_ttft_ms
from geodb.published_rtt import AWS_2017, MATCH_KM, aws_2017
from geodb.regions import known_region, known_regions

EVENTS = ("overload", "drain", "fail")


@dataclass
class WorldResult:
    rows: list[wr.SiteRow]
    events: list[wr.EventRow]
    samples: list[wr.Sample]
    chart: Path | None
    out: Path
    work: Path  # the run's folder of logs and configs: gone unless kept (--keep-work)
    md: str  # world.md: what was run, then the tables


async def _measure(world: World, progress: Progress | None) -> list[wr.Sample]:
    spec = world.spec
    n_combos = len(wr.TOPOLOGIES) * len(spec.sites)
    task = progress.add_task("steady state", total=spec.requests * n_combos) if progress else None

    def tick() -> None:
        if progress is not None and task is not None:
            progress.advance(task)

    samples = await steady(world, tick)
    for event, region in event_regions(spec).items():
        if event not in spec.events:
            continue
        if progress is not None and task is not None:
            progress.update(task, description=f"event: {event} {region}", total=None)
        samples += await event_phase(world, event, region, tick)
    return samples


def _run(world: World) -> list[wr.Sample]:
    spec = world.spec
    if spec.progress:  # the bar starts with the requests; start-up takes a few seconds
        n = len(spec.regions) * (1 + spec.regional_gateways) + len(spec.sites) + 1
        print(
            f"starting {n} processes (backends, gateways, relays); logs in {world.work} "
            "(removed if the run ends well)"
        )
    world.start()
    if spec.backend == "model":  # its TTFT is what it takes here: measured, for the floor
        rid = spec.regions[0]
        first = f"http://127.0.0.1:{world.sim_ports[rid]}"
        ttft = asyncio.run(backend_ttft_ms(first, spec.sites[0], log=world.work / f"{rid}.log"))
        world.spec = replace(spec, backend_ttft_ms=ttft)
    if not spec.progress:
        return asyncio.run(_measure(world, None))
    with Progress(transient=True) as progress:
        return asyncio.run(_measure(world, progress))


def run_world(spec: WorldSpec) -> WorldResult:
    output_dir(spec.out, "world")  # before any process starts: a run takes minutes
    # its processes' logs and configs: gone when the run ends well, else kept and named
    with work_folder("geogate-world-", spec.keep_work, "world: logs and configs") as work:
        world = World(spec, work)
        # SIGTERM and SIGHUP as Ctrl-C: the `finally:` stops the dozen processes started
        with interruptible():
            try:
                samples = _run(world)
            finally:
                world.stop()
    return _report(world, samples)


def _report(world: World, samples: list[wr.Sample]) -> WorldResult:
    spec = world.spec
    floors = {
        s.name: min(rtt(s, r, spec.rtt_table) for r in spec.regions) + spec.backend_ttft_ms
        for s in spec.sites
    }
    rows = wr.site_rows(samples, floors, "steady")
    # where each topology sends each site before the events: (a) its origin, else the nearest
    home = {
        t: {
            s.name: spec.origin if t == "origin" else nearest(s, spec.regions, spec.rtt_table)
            for s in spec.sites
        }
        for t in wr.TOPOLOGIES
    }
    for row in rows:  # geogate's home: where its steady-state requests went
        mine = [
            x.region
            for x in samples
            if x.phase == "steady" and x.site == row.site and x.topology == "geogate" and x.ok
        ]
        if mine:
            home["geogate"][row.site] = max(set(mine), key=mine.count)
    events = []
    for event, region in staged(spec).items():
        events += wr.event_rows(samples, event, region, home)
    md = wr.markdown(rows, events, spec.origin, intro(spec))
    with writing(spec.out, "world"):
        wr.write(spec.out, rows, events, meta(spec), md)
        chart = wr.chart(spec.out, rows, spec.origin)
        return WorldResult(rows, events, samples, chart, spec.out, world.work, md)


def staged(spec: WorldSpec) -> dict[str, str]:
    """The events this run stages, in their order, each with the region it hits."""
    return {e: r for e, r in event_regions(spec).items() if e in spec.events}


def rtt_sources(spec: WorldSpec) -> dict[str, int]:
    """Where the site-region RTTs came from, with how many pairs each."""
    out: dict[str, int] = {}
    for s in spec.sites:
        for r in spec.regions:
            src = spec.rtt_source.get((s.name, r), "model")
            name = {
                "model": "the distance model (geodb.distance.est_rtt_ms)",
                "published": f"published AWS figures (--published-rtt, geodb/data/{AWS_2017})",
            }.get(src.split(" ")[0], src)
            out[name] = out.get(name, 0) + 1
    return out


def intro(spec: WorldSpec) -> str:
    """world.md's first lines: what was run, where its RTTs came from, which events."""
    n = len(spec.sites) * len(spec.regions)
    rtts = "; ".join(
        f"{name} for {k} of {n} site-region pairs" for name, k in rtt_sources(spec).items()
    )
    ttft = "set" if spec.backend == "sim" else "measured before the run"
    c = "edge + regional gateways" if spec.regional_gateways else "edges straight to the backends"
    events = ", ".join(f"{e} ({r})" for e, r in staged(spec).items())
    overload = f"; overload: TTFT {spec.overload_ttft_ms:g} ms" if "overload" in spec.events else ""
    lines = [
        f"geogate world: {len(spec.sites)} sites, regions {', '.join(spec.regions)}; "
        f"(a) origin {spec.origin}; (c) {c}; requests per site and topology: {spec.requests}",
        f"- RTTs: {rtts}",
        f"- backend: {spec.backend}, TTFT {spec.backend_ttft_ms:.1f} ms ({ttft})",
        f"- events: {events}; {spec.event_s:g} s of traffic after each{overload}"
        if events
        else "- events: none (steady state only)",
    ]
    return "\n".join(lines) + "\n"


def meta(spec: WorldSpec) -> dict[str, Any]:
    table = spec.rtt_table
    return {
        "sites": [s.name for s in spec.sites],
        "regions": list(spec.regions),
        "origin": spec.origin,
        "requests_per_site_and_topology": spec.requests,
        "backend": spec.backend,
        "backend_ttft_ms": round(spec.backend_ttft_ms, 1),
        "backend_ttft_source": "set (sim-backend --ttft-ms)"
        if spec.backend == "sim"
        else "measured: median of direct requests on loopback before the run",
        "regional_gateways": spec.regional_gateways,
        "events": [{"event": e, "region": r} for e, r in staged(spec).items()],
        "event_s": spec.event_s,
        "event_lead_in_s": LEAD_S,
        "event_pace_s": PACE_S,
        "overload_ttft_ms": spec.overload_ttft_ms if "overload" in spec.events else None,
        "rtt_model": "geodb.distance.est_rtt_ms (fitted to published inter-region P50 RTTs)"
        + (", replaced per pair as site_region_rtt_source says" if table else ""),
        "rtt_sources": rtt_sources(spec),
        "site_region_rtt_ms": {
            f"{s.name}->{r}": round(rtt(s, r, table), 1) for s in spec.sites for r in spec.regions
        },
        "site_region_rtt_source": {
            f"{s.name}->{r}": spec.rtt_source.get((s.name, r), "model")
            for s in spec.sites
            for r in spec.regions
        },
    }


def read_rtt_table(text: str, where: str) -> Table:
    """``site,region,rtt_ms`` rows (``#`` comments, a header row allowed); one line per
    mistake."""
    out: Table = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.lower().replace(" ", "") == "site,region,rtt_ms":
            continue
        parts = [x.strip() for x in line.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            value = float(parts[2])
        except ValueError:
            raise CLIError(f"world: {where}:{n}: want site,region,rtt_ms, got {raw!r}") from None
        if not 0 < value < 2000:
            raise CLIError(f"world: {where}:{n}: rtt_ms must be between 0 and 2000, got {value}")
        if parts[0].lower() not in {s.name.lower() for s in SITES}:
            raise CLIError(f"world: {where}:{n}: unknown site {parts[0]!r}")
        if parts[1] not in known_regions():
            raise CLIError(f"world: {where}:{n}: unknown region {parts[1]!r}")
        site = next(s.name for s in SITES if s.name.lower() == parts[0].lower())
        if (site, parts[1]) in out:  # the last of two was taken, unsaid
            raise CLIError(f"world: {where}:{n}: {site},{parts[1]} is given twice")
        out[(site, parts[1])] = value
    return out


def published_pairs(
    sites: tuple[Site, ...], regions: tuple[str, ...]
) -> tuple[Table, dict[tuple[str, str], str]]:
    """--published-rtt: the shipped table's figure for every (site, region) pair whose site and
    region each lie within MATCH_KM of a different listed region; the model elsewhere."""
    pub = aws_2017()
    table: Table = {}
    source: dict[tuple[str, str], str] = {}
    for s in sites:
        for r in regions:
            k = known_region(r)
            m = pub.lookup(s.lat, s.lon, k.latitude, k.longitude)
            if m is not None:
                table[(s.name, r)] = m.rtt_ms
                source[(s.name, r)] = f"published ({AWS_2017}: {m.src} - {m.dst})"
    return table, source


def rtt_tables(
    sites: tuple[Site, ...], regions: tuple[str, ...], published: bool, user: Path | None
) -> tuple[Table, dict[tuple[str, str], str]]:
    """The per-pair RTTs that replace the model, and where each came from: the published
    table's (--published-rtt), then the user's (--rtt-table), which wins where both list a
    pair: it is the user's own measurement."""
    table, source = published_pairs(sites, regions) if published else ({}, {})
    if user is not None:
        mine = read_rtt_table(read_text(user, "world"), str(user))
        table |= mine
        source |= dict.fromkeys(mine, f"--rtt-table {user}")
    return table, source


def pick_sites(names: list[str] | None) -> tuple[Site, ...]:
    if not names:
        return SITES
    by_name = {s.name.lower(): s for s in SITES}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        known = ", ".join(s.name for s in SITES)
        raise CLIError(f"world: unknown site {unknown[0]!r}; known: {known}")
    _no_twice("--sites", [n.lower() for n in names], names)
    return tuple(by_name[n.lower()] for n in names)


def _no_twice(option: str, keys: list[str], given: list[str]) -> None:
    """A site or region named twice would be measured twice and counted twice."""
    twice = next((g for k, g in zip(keys, given, strict=True) if keys.count(k) > 1), None)
    if twice is not None:
        raise CLIError(f"world: {option} names {twice!r} more than once")


def add_parser(sub: argparse._SubParsersAction[OneLineParser], said: str) -> None:
    w = sub.add_parser("world", help=said)
    w.add_argument("--sites", nargs="+", metavar="SITE", help="client sites (default: all 8)")
    w.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS), metavar="REGION")
    w.add_argument("--origin", default="eu-central", help="topology (a)'s single origin")
    w.add_argument(
        "--requests",
        type=int,
        default=10,
        help=f"per site and topology (steady; at most {wcheck.MAX_REQUESTS:,})",
    )
    w.add_argument(
        "--events",
        nargs="*",
        default=None,
        choices=EVENTS,
        help="events to run, always in the order overload, drain, fail (none: steady only; "
        "default: all the backend supports, --backend model: drain fail)",
    )
    w.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sim",
        help="sim: sim-backend (40 ms TTFT); model: the real model server on the CPU, one per "
        "region, serving the tiny model built locally or --model-dir",
    )
    w.add_argument("--model-dir", type=Path, help="--backend model: serve this model directory")
    w.add_argument("--event-s", type=float, default=4.0, help="seconds of traffic per event")
    w.add_argument("--out", type=out_path, default=Path("world-results"), help="output folder")
    w.add_argument("--no-progress", action="store_true")
    w.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the run's folder of logs and configs (removed when the run ends well; kept, "
        "and named, when it fails)",
    )
    w.add_argument(
        "--regional-gateways",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(c) edge -> WAN -> regional gateway -> backend (default); --no-regional-gateways:"
        " the edges' upstreams are the backends",
    )
    w.add_argument(
        "--rtt-table",
        type=Path,
        metavar="CSV",
        help="site,region,rtt_ms rows to use instead of the distance model (per pair; wins"
        " over --published-rtt)",
    )
    w.add_argument(
        "--published-rtt",
        action="store_true",
        help=f"published AWS inter-region RTTs (2017, shipped: geodb/data/{AWS_2017}) for every"
        f" pair whose site and region are each within {MATCH_KM:.0f} km of a different listed"
        " region; the distance model elsewhere",
    )


def run_command(args: argparse.Namespace) -> None:
    bad = [r for r in [*args.regions, args.origin] if r not in known_regions()]
    if bad:
        raise CLIError(f"world: unknown region {bad[0]!r}; known: {', '.join(known_regions())}")
    _no_twice("--regions", args.regions, args.regions)
    if args.origin not in args.regions:
        raise CLIError(f"world: the origin {args.origin!r} is not one of --regions")
    wcheck.check_requests(args.requests)
    wcheck.check_event_s(args.event_s)
    events = tuple(args.events) if args.events is not None else KINDS[args.backend].events
    check_events(args.backend, events)
    wcheck.check_event_regions(events, tuple(args.regions))
    if args.model_dir is not None and (args.backend != "model" or not args.model_dir.is_dir()):
        raise CLIError(f"world: --model-dir {args.model_dir} needs --backend model and a directory")
    sites = pick_sites(args.sites)
    table, source = rtt_tables(sites, tuple(args.regions), args.published_rtt, args.rtt_table)
    spec = WorldSpec(
        rtt_table=table,
        rtt_source=source,
        regional_gateways=args.regional_gateways,
        sites=sites,
        regions=tuple(args.regions),
        origin=args.origin,
        requests=args.requests,
        events=events,
        backend=args.backend,
        model_dir=args.model_dir,
        event_s=args.event_s,
        out=args.out,
        progress=not args.no_progress,
        keep_work=args.keep_work,
    )
    result = run_world(spec)
    print(result.md, end="")
    written = ["world.md", "world.json"] + ([result.chart.name] if result.chart else [])
    print(f"\nwritten to {spec.out}/: {', '.join(written)}")
    if result.chart is None:
        print("(no chart: matplotlib is not installed; pip install 'geogate[charts]')")
