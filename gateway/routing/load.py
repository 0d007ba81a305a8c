"""A backend's load: read from its Prometheus text (vLLM, TGI, SGLang, geogate's backend, or
a regional geogate gateway's published ``/load``) and turned into the estimate the router
scores with.

Pure: text in, a ``LoadReading`` out; a reading and the previous ``LoadState`` in, the next
state out. Only the few samples read are parsed, by name and value (``samples``); the
tests hold it to prometheus_client's parser on every server's text.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from gateway.routing.model import UpstreamView

# Metric family names (as the parser reports them: counters without "_total").
QUEUE = ("vllm:num_requests_waiting", "tgi_queue_size", "sglang:num_queue_reqs")
RUNNING = ("vllm:num_requests_running", "tgi_batch_current_size", "sglang:num_running_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
TTFT_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")
# What a geogate gateway publishes for the gateways in front of it (an edge whose upstream is
# a regional gateway): the TTFT a request it routes would expect now, already queue-adjusted
# and smoothed, as a gauge.
REGION_TTFT = "geogate_region_ttft_seconds"
REGION_ROUTABLE = "geogate_region_routable_upstreams"


@dataclass(frozen=True, slots=True)
class LoadReading:
    queue_depth: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    ttft_sum_s: float | None = None  # cumulative: the poller turns two readings into a mean
    ttft_count: float | None = None
    # A gateway's published estimate (REGION_TTFT): taken as it is, not differenced
    ttft_ms: float | None = None


# What parse_load reads: the sample names, and the families' names they start with.
_FAMILIES = frozenset((*QUEUE, *RUNNING, *KV_USAGE, *TTFT_HISTOGRAMS, REGION_TTFT))
_SAMPLES = frozenset(
    (
        *QUEUE,
        *RUNNING,
        *KV_USAGE,
        REGION_TTFT,
        *(f"{h}_{part}" for h in TTFT_HISTOGRAMS for part in ("sum", "count")),
    )
)
_PREFIXES = tuple(_FAMILIES)
# The query that asks a scrape for those samples alone, as prometheus_client's own exposition
# handler takes it (make_asgi_app, make_wsgi_app, start_http_server; geogate's backend and
# sim-backend do the same): those samples then instead of every family, the rest read and
# encoded by neither side. A server that ignores the query (TGI, a regional gateway's /load,
# any other) sends its whole text, which parse_load reads as before. One whose registry the
# filter empties (prometheus_client's multiprocess collector, which names no samples up front)
# is then scraped whole (gateway.watch.load_poller.poll_once).
SCRAPE_QUERY = urlencode([("name[]", name) for name in sorted(_SAMPLES)])


def samples(text: str) -> Iterator[tuple[str, float]]:
    """(name, value) of each sample of ``text`` that parse_load reads; labels and timestamps
    are skipped (a label value may hold spaces and braces: the value follows the last "}").
    A backend's /metrics is mostly other families (histogram buckets, process and Python
    metrics). prometheus_client's parser, even given only the lines read here, was most of a
    scrape's cost (bench/hotpath.py, "load scrape parsed": 86 µs with ``--tree`` on commit
    02f72c8, 24-36 µs in bench/results/round6/hotpath.txt), four times a second per upstream
    even on an idle worker (bench/idle_cpu.py). Only names and values are read here, so the
    exposition format's escaping rules do not come into it. A value that is not a number
    raises ValueError."""
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        name = line.split("{", 1)[0].split(None, 1)[0]
        if name not in _SAMPLES:
            continue
        rest = line[len(name) :].lstrip()
        if rest.startswith("{"):
            rest = rest[rest.rindex("}") + 1 :]
        value, *_ = rest.split() or [""]
        yield name, float(value)


def parse_load(text: str) -> LoadReading:
    values: dict[str, float] = {}
    ttft_sum = ttft_count = ttft_now = None
    for name, value in samples(text):
        if name == REGION_TTFT:
            ttft_now = 1000 * value if ttft_now is None else min(ttft_now, 1000 * value)
        elif name.endswith("_sum"):  # a TTFT histogram's (the only _SAMPLES so named)
            ttft_sum = (ttft_sum or 0.0) + value
        elif name.endswith("_count"):
            ttft_count = (ttft_count or 0.0) + value
        else:  # summed over label sets: one per model (vLLM) or per engine (SGLang DP ranks)
            values[name] = values.get(name, 0.0) + value

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    return LoadReading(
        first(QUEUE), first(RUNNING), first(KV_USAGE), ttft_sum, ttft_count, ttft_now
    )


def routable_views(views: Sequence[UpstreamView]) -> list[UpstreamView]:
    """The upstreams a request could be routed to now: healthy, not drained, weight above 0
    (a weight-0 standby takes traffic only when nothing else can)."""
    return [u for u in views if u.healthy and not u.drained and u.weight > 0]


def ttft_prior(serving: Sequence[UpstreamView]) -> float | None:
    """The TTFT to assume for an upstream with no fresh value of its own: the median of the
    fresh values of the upstreams serving the same model (None when none has one). Never 0:
    an idle far backend scored at 0 ms would look faster than a near one that is working."""
    known = [u.ttft_ms for u in serving if u.ttft_ms is not None]
    return statistics.median(known) if known else None


def load_term(u: UpstreamView, ttft: float) -> float:
    """The wait ``u`` adds, as the router scores it: ``ttft`` stretched by the queue in front
    of each slot."""
    return ttft * (1.0 + (u.queue_depth or 0.0) / u.slots)


def expected_ttft_ms(views: Sequence[UpstreamView]) -> float | None:
    """What a request this gateway routes now would wait for its first token, scored as its
    router scores load: the best routable upstream's ``load_term``, one with no fresh TTFT
    taking ``ttft_prior``. None when no routable upstream has a fresh TTFT: unmeasured, not
    fast. Network cost is left out: a regional gateway's upstreams sit beside it, and the
    gateway reading this figure measures its own RTT to here."""
    routable = routable_views(views)
    prior = ttft_prior(routable)
    if prior is None:
        return None
    return min(load_term(u, prior if u.ttft_ms is None else u.ttft_ms) for u in routable)


@dataclass(slots=True)
class LoadState:
    """Latest load of one upstream, from polling its /metrics."""

    at: float  # monotonic time of the sample
    queue_depth: float | None
    ttft_ms: float | None  # EWMA of the mean TTFT between polls
    ttft_sum_s: float | None  # last cumulative readings, to take differences
    ttft_count: float | None
    # When a request last confirmed ttft_ms. A backend shunned for a high TTFT gets no
    # requests, so nothing would ever show that it recovered: an unconfirmed estimate
    # expires like a stale sample, and the backend is tried (and measured) again.
    ttft_at: float = 0.0
    kv_usage: float | None = None  # shown in /routing-table and fleet observations


def next_load(
    prev: LoadState | None, reading: LoadReading, now: float, max_age_s: float, alpha: float
) -> LoadState:
    """The state after one more reading."""
    # An estimate past its age is not blended into the next one: it restarts from the
    # first new measurement.
    ttft = prev.ttft_ms if prev and now < prev.ttft_at + max_age_s else None
    ttft_at = prev.ttft_at if prev else now
    if reading.ttft_ms is not None:
        # A gateway's own estimate, smoothed and expired by it: smoothing it again here would
        # only slow the move away from an overloaded region.
        ttft, ttft_at = reading.ttft_ms, now
    elif (
        prev
        and reading.ttft_sum_s is not None
        and reading.ttft_count is not None
        and prev.ttft_sum_s is not None
        and prev.ttft_count is not None
        and reading.ttft_count > prev.ttft_count
        # Sums over several label sets (models, data-parallel engines): one that restarted
        # can lower the sum while the count still rises. A reset, not a negative TTFT.
        and reading.ttft_sum_s >= prev.ttft_sum_s
    ):
        # The mean TTFT of the requests that finished their first token since last poll.
        mean_ms = (
            1000 * (reading.ttft_sum_s - prev.ttft_sum_s) / (reading.ttft_count - prev.ttft_count)
        )
        ttft = mean_ms if ttft is None else alpha * mean_ms + (1 - alpha) * ttft
        ttft_at = now
    return LoadState(
        now,
        reading.queue_depth,
        ttft,
        reading.ttft_sum_s,
        reading.ttft_count,
        ttft_at,
        reading.kv_usage,
    )
