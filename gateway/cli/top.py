"""``geogate ctl top``: a live table of a gateway's regions and upstreams, redrawn in place each
second (rich's ``Live``: plain ANSI cursor moves, so it works in any terminal and over SSH).

Each frame reads the gateway's ``/routing-table`` (health with the fleet's votes, RTT, queue,
TTFT, in-flight, ejections) and ``/metrics``; rates (requests/s, errors/s) and the time to
first byte percentiles are the counters' and histogram's change over the last ``WINDOW_S``.
In-flight counts come from ``/metrics``, whose gauges are every worker's (merged), where the
routing table's are the answering worker's alone. A rate that would be negative (a counter
that went back: a restart) is shown as "?", never as a wrong number.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.cli.ctl_fleet import GatewayFleet
from gateway.cli.errors import CLIError

WINDOW_S = 10.0  # rates and percentiles over the last 10 s: steady to read, quick to follow
FULL_SCRAPE_TRIES = 3  # a base sample that lacks a worker is scraped again, this often at most
FULL_SCRAPE_WAIT_S = 0.2  # ...this long apart: a slow worker's answer is the next scrape's
UNROUTED = "-"  # the region label of a request refused before routing (gateway.http.exchange)
HEALTH_WIDTH = 50  # "ejected 300s: failure rate 12/20 requests in 10 s" fits; longer is cut
Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic() when scraped
    values: dict[Key, float]


def parse_metrics(text: str) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(sample: Sample, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in sample.values.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )


def in_flight(sample: Sample, uid: str, table_says: object) -> int:
    """``uid``'s requests in flight: every worker's (the merged gauge in /metrics); the routing
    table's count, its one worker's, only where /metrics has none (a gateway of an earlier
    release)."""
    if any(n == "geogate_upstream_in_flight" for n, _ in sample.values):
        return int(_sum(sample, "geogate_upstream_in_flight", upstream=uid))
    return int(table_says) if isinstance(table_says, int | float) else 0


def _rate(old: Sample | None, new: Sample, name: str, **match: str) -> float | None:
    """Per second between two samples; None: no window yet, or a counter that went back (a
    restart, another worker)."""
    if old is None or new.t <= old.t:
        return None
    delta = _sum(new, name, **match) - _sum(old, name, **match)
    return None if delta < 0 else delta / (new.t - old.t)


def _buckets(sample: Sample, name: str, region: str) -> dict[float, float]:
    """``region``'s cumulative buckets of histogram ``name``: of its streams where it counts
    them apart (the first byte's ``stream`` label: a whole answer's first byte is its end),
    else of all its requests."""
    out: dict[float, float] = {}
    for (n, labels), v in sample.values.items():
        d = dict(labels)
        if n == name and d.get("region") == region and d.get("stream", "true") == "true":
            out[float(d["le"])] = out.get(float(d["le"]), 0.0) + v
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative ``buckets`` (upper bound -> count):
    linear within the bucket the rank falls in; None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the largest finite bound: that bound is all we know
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def ttfb_ms(old: Sample | None, new: Sample, region: str) -> tuple[float | None, float | None]:
    """(p50, p99) of the time to first byte in ``region`` over the window, in ms."""
    if old is None:
        return None, None
    name = "geogate_time_to_first_byte_seconds_bucket"
    before = _buckets(old, name, region)
    delta = {le: v - before.get(le, 0.0) for le, v in _buckets(new, name, region).items()}
    if any(v < 0 for v in delta.values()):
        return None, None
    p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
    return (None if p50 is None else p50 * 1000), (None if p99 is None else p99 * 1000)


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "?" if v is None else fmt.format(v)


def health_cell(u: dict[str, Any]) -> Text:
    if u.get("drained"):
        return Text("drained", style="yellow")
    if u.get("ejected_s"):
        why = u.get("ejection_cause") or "by another worker of this gateway"
        return Text(f"ejected {u['ejected_s']:.0f}s: {why}", style="red")
    if u.get("fleet_down") or not u.get("healthy"):
        # This gateway's own probe error when it has one; else most of the fleet sees it down.
        why = u.get("last_error") or ("the fleet's votes" if u.get("fleet_down") else "failing")
        return Text(f"down: {why}", style="red")
    return Text("up", style="green")


def votes_cell(seen_by: dict[str, bool]) -> str:
    """The fleet's votes: how many gateways see it up, and who sees it down."""
    if not seen_by:
        return "local"
    down = sorted(g for g, ok in seen_by.items() if not ok)
    up = len(seen_by) - len(down)
    return f"{up}/{len(seen_by)} up" + (f" (down: {', '.join(down)})" if down else "")


def weight_cell(u: dict[str, Any]) -> str:
    """The weight, and the bias beside it when there is one: an upstream biased away took no
    traffic with nothing on its row to say why."""
    bias = u.get("bias_ms") or 0
    return f"{u.get('weight', 1):g}" + (f" {bias:+g}ms" if bias else "")


COLUMNS = (
    "region / upstream",
    "health",
    "fleet votes",
    "weight bias",
    "RTT ms",
    "queue",
    "TTFT ms",
    "in-flight",
    "req/s",
    "err/s",
    "ejections",
)


# A whole (non-streaming) answer's first byte is its end, so the histogram counts streams
# only: said under the table, so that a region with only such traffic showing no percentiles
# is not read as a fault.
TTFB_NOTE = (
    "note: a region's TTFT ms is the p50/p99 time to first byte of its streaming requests "
    "only (blank while it serves none)"
)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # Rich's own ends the process with status 1; raised instead, it ends as every ctl
        # command's output into a closed pipe does (gateway.cli.main: quietly, 141).
        raise BrokenPipeError


def frame(
    url: str, table: dict[str, Any], old: Sample | None, new: Sample, problem: str = ""
) -> Group:
    """One screen: a header line, then each region and its upstreams."""
    t = Table(*COLUMNS, box=None, header_style="bold", pad_edge=False)
    for col in t.columns[3:]:
        col.justify = "right"
    t.columns[0].no_wrap = True
    # One line per upstream whatever the error says: cut it, the row stays readable.
    health = t.columns[1]
    health.no_wrap, health.overflow, health.max_width = True, "ellipsis", HEALTH_WIDTH
    for r in table.get("regions", []):
        _region_rows(t, r, old, new)
    _unrouted_row(t, old, new)
    shared = table.get("shared_state", "?")
    if shared == "fresh" and table.get("fleet_config_refused"):  # on the version before Redis's
        shared = "fresh, fleet config refused (ctl show says why)"
    head = Text.assemble(
        ("geogate top ", "bold"),
        f"{url}  region {table.get('self_region')}  config v{table.get('version')}  ",
        ("shared state " + shared, "" if shared in ("fresh", "local") else "red"),
        f"  {time.strftime('%H:%M:%S')}",
    )
    lines: list[Text | Table] = [head]
    if problem:
        lines.append(Text(problem, style="bold red"))
    lines += [t, Text(TTFB_NOTE, style="dim")]
    return Group(*lines)


def _region_rows(t: Table, r: dict[str, Any], old: Sample | None, new: Sample) -> None:
    ups: list[dict[str, Any]] = r.get("upstreams", [])
    rid = str(r["id"])
    routable = sum(1 for u in ups if u.get("healthy") and not u.get("drained"))
    p50, p99 = ttfb_ms(old, new, rid)
    req_s, err_s = _region_rates(old, new, rid)
    t.add_row(
        Text(f"{rid} {r.get('name') or ''}".strip(), style="bold"),
        Text(f"{routable}/{len(ups)} routable", style="green" if routable else "bold red"),
        "",
        "",
        "",
        "",
        f"p50 {_num(p50)} p99 {_num(p99)}" if p50 is not None else "",
        str(sum(in_flight(new, str(u["id"]), u.get("in_flight")) for u in ups)),
        _num(req_s, "{:.1f}"),
        _num(err_s, "{:.1f}"),
        "",
    )
    for u in ups:
        uid = str(u["id"])
        ok = _rate(old, new, "geogate_upstream_attempts_total", upstream=uid, outcome="ok")
        every = _rate(old, new, "geogate_upstream_attempts_total", upstream=uid)
        t.add_row(
            f"  {uid}",
            health_cell(u),
            votes_cell(u.get("seen_by") or {}),
            weight_cell(u),
            _num(u.get("rtt_ms"), "{:.1f}"),
            _num(u.get("queue_depth")),
            _num(u.get("ttft_ms")),
            str(in_flight(new, uid, u.get("in_flight"))),
            _num(every, "{:.1f}"),
            _num(None if every is None or ok is None else max(every - ok, 0.0), "{:.1f}"),
            str(u.get("times_ejected", 0)),
        )


def _unrouted_row(t: Table, old: Sample | None, new: Sample) -> None:
    """Requests the gateway answered before any region was chosen (``region="-"``): req/s
    all of them (the model list, a client's 404 or 400 too), err/s its 5xx refusals (no
    upstream allowed for the model or the client's rule, the gateway full). A drained
    region's refused clients showed nowhere in the table."""
    if not _codes(new, UNROUTED):
        return
    req_s, err_s = _region_rates(old, new, UNROUTED)
    busy = bool(err_s)
    t.add_row(
        Text("before routing (err/s: refused)", style="bold red" if busy else "bold"),
        *[""] * 7,
        _num(req_s, "{:.1f}"),
        Text(_num(err_s, "{:.1f}"), style="bold red" if busy else ""),
        "",
    )


def _region_rates(
    old: Sample | None, new: Sample, region: str
) -> tuple[float | None, float | None]:
    """(requests/s, 5xx/s) of ``region``'s label. Per 5xx code: one that went back (another
    worker's counters) makes the sum unknown, "?", not a rate that leaves that code out."""
    req_s = _rate(old, new, "geogate_requests_total", region=region)
    errs = [
        _rate(old, new, "geogate_requests_total", region=region, code=str(c))
        for c in _codes(new, region)
        if c >= 500
    ]
    err_s = None if req_s is None or None in errs else sum(e for e in errs if e is not None)
    return req_s, err_s


def restarted(old: Sample, new: Sample) -> bool:
    """Whether a worker's counters went back between two samples (the gateway or the worker
    restarted): the samples before are then no base for a rate, only "?" for the whole
    window. Per worker (the merged /metrics' ``worker`` label): a scrape a slow worker missed
    is lower in sum but restarted nothing, and taken for a restart it became the base, so
    the next full scrape counted that worker's whole life as new requests."""
    before, after = _by_worker(old), _by_worker(new)
    return any(after[w] < n for w, n in before.items() if w in after)


def partial(sample: Sample) -> bool:
    """Whether a scrape lacks a worker's series (the merged /metrics waits only so long for
    each, and says how many answered)."""
    workers = _sum(sample, "geogate_workers")
    return workers > 0 and _sum(sample, "geogate_workers_scraped") < workers


def _by_worker(sample: Sample) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in sample.values.items():
        if name == "geogate_requests_total":
            worker = dict(labels).get("worker", "")
            out[worker] = out.get(worker, 0.0) + v
    return out


def _codes(sample: Sample, region: str) -> set[int]:
    return {
        int(dict(labels)["code"])
        for (n, labels), _ in sample.values.items()
        if n == "geogate_requests_total" and dict(labels).get("region") == region
    }


async def _scrape(fleet: GatewayFleet) -> tuple[dict[str, Any], Sample]:
    table = await fleet.routing_table()
    metrics = await fleet.metrics()
    return table, Sample(time.monotonic(), parse_metrics(metrics))


async def _full_scrape(fleet: GatewayFleet) -> tuple[dict[str, Any], Sample]:
    """A scrape every worker answered, where one comes within a few tries: a rate's base (the
    first sample, --once's two) missing a worker counts its whole life as new requests."""
    for _ in range(FULL_SCRAPE_TRIES - 1):
        table, sample = await _scrape(fleet)
        if not partial(sample):
            return table, sample
        await asyncio.sleep(FULL_SCRAPE_WAIT_S)
    return await _scrape(fleet)


async def run_top(fleet: GatewayFleet, *, once: bool, interval_s: float) -> None:
    if not 0 < interval_s <= 60:
        raise CLIError(f"--interval must be more than 0 and at most 60 s (got {interval_s:g})")
    console = _Console()
    if not console.is_terminal:
        console = _Console(width=160)  # piped (--once in a script): no row cut at 80 columns
    samples: deque[Sample] = deque()
    table, sample = await _full_scrape(fleet)  # a first failure: one line, exit status 2
    samples.append(sample)
    if once:
        await asyncio.sleep(interval_s)  # two samples: rates need a window
        table, sample = await _full_scrape(fleet)
        console.print(frame(fleet.url, table, samples[0], sample))
        return
    problem = ""
    # Ctrl-C ends it (exit status 130); Live puts the cursor back on the way out. Piped or
    # redirected, a frame per interval is appended instead: Live draws only on a terminal, and
    # `ctl top > file` wrote nothing until it was stopped.
    piped = not console.is_terminal
    live = Live(console=console, auto_refresh=False, screen=False)
    with contextlib.nullcontext() if piped else live:
        while True:
            while sample.t - samples[0].t > WINDOW_S:
                samples.popleft()
            old = samples[0] if samples[0] is not sample else None
            shown = frame(fleet.url, table, old, sample, problem)
            if piped:
                console.print(shown)
                console.file.flush()
            else:
                live.update(shown, refresh=True)
            await asyncio.sleep(interval_s)
            try:
                table, new = await _scrape(fleet)
                problem = ""
                if partial(new):
                    # Kept, it would be a rate's base a window later: a missing worker's whole
                    # count read as new requests.
                    problem = "a worker missed this scrape; rates are from the last full one"
                    continue
                if restarted(samples[-1], new):
                    samples.clear()
                sample = new
                samples.append(sample)
            except CLIError as exc:  # keep the last frame; say what is wrong, and retry
                problem = f"{exc} (retrying; the numbers below are from before)"
