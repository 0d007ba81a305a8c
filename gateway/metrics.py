"""Prometheus metrics of one gateway process (its own registry, not the global one).

The metrics a proxied request updates are this module's own ``RequestCounter`` and
``RequestHistogram``, not prometheus_client's Counter and Histogram: those take a lock and
four Python calls per ``inc`` (``inc``, ``_raise_if_not_observable``, ``_is_observable``, the
value's ``inc`` under its mutex) and a Python loop over the buckets per ``observe``, for each
of the five updates of a served request. Ours are plain numbers behind one method call, and
a ``bisect`` for the bucket: a worker's requests and its ``/metrics`` scrape run in one thread,
its event loop's, so there is nothing to lock against. They expose the same samples,
``_total``, ``_bucket``, ``_count`` and ``_sum``, without prometheus_client's ``_created``
(the time each series was first seen: no dashboard or alert here reads it).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence, Set
from itertools import pairwise
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

# Buckets reach minutes: an LLM response can legitimately stream that long.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Every outcome of geogate_upstream_attempts (gateway.http.upstream): an answer passed on
# ("ok" below 500, "status_5xx" from 500), a status failed over (gateway.client's Failure
# label of upstream.RETRYABLE_STATUS) or a failure kind. Bounded, so each upstream's series
# are made at 0 before its first attempt (gateway.watch.ejections.reconcile_gauges): an
# increase() sees the first one.
ATTEMPT_OUTCOMES = (
    "ok",
    "status_5xx",
    "status_429",
    "status_502",
    "status_503",
    "refused",
    "reset",
    "timeout",
)
# geogate_stream_aborted's causes (gateway.http.final_error.abort_cause), made at 0 likewise.
ABORT_CAUSES = ("upstream_error", "timeout", "total_timeout", "drain")


class CountChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:  # as prometheus_client's Counter: a counter only goes up
            raise ValueError("a counter only goes up: inc() by a negative amount")
        self.value += amount


class ObserveChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus' le ("less or equal") bucket.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


Child = TypeVar("Child", CountChild, ObserveChild)


class _Family(Collector, Generic[Child]):
    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    @abstractmethod
    def _new_child(self) -> Child: ...

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            # The label values as the child's key: their number checked, each made a string
            # (as prometheus_client does), so that no value can break the exposition later.
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(values)} label values for {self.labelnames}")
            child = self._children.setdefault(tuple(map(str, values)), self._new_child())
        return child

    def describe(self) -> Iterable[Metric]:
        """What the registry checks names against: a second metric of this name is refused."""
        return self.collect()

    def keep(self, index: int, values: Set[str]) -> None:
        """Remove the series whose ``index``-th label value is not in ``values`` (an upstream
        gone): at a scrape, never on the request path. A request still in flight to it makes
        its series again, until the next scrape."""
        for key in [k for k in self._children if k[index] not in values]:
            del self._children[key]


class RequestCounter(_Family[CountChild]):
    """A labelled counter for the request path (see the module's docstring)."""

    def _new_child(self) -> CountChild:
        return CountChild()

    def count(self, *values: str) -> None:
        """``labels(*values).inc()`` in one call, the request path's form: a request counts
        six series, and a Python call is most of what each update costs."""
        child = self._children.get(values)
        if child is None:
            child = self.labels(*values)
        child.value += 1.0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class RequestHistogram(_Family[ObserveChild]):
    """A labelled histogram for the request path (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == INF:
            bounds.pop()  # +Inf is always the last bucket: given or not, as prometheus_client
        increasing = all(a < b for a, b in pairwise(bounds))
        if not bounds or not increasing or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be given in increasing order")
        self._bounds = tuple(bounds)
        # prometheus_client's own text for each bound ("1.0", "+Inf"): the same series as its
        # Histogram's, so dashboards and alert rules match either.
        self._les = [floatToGoString(b) for b in (*self._bounds, INF)]  # type: ignore[no-untyped-call]
        super().__init__(name, doc, labelnames, registry)

    def _new_child(self) -> ObserveChild:
        return ObserveChild(self._bounds)

    def observe_at(self, value: float, *values: str) -> None:
        """``labels(*values).observe(value)`` in one call (``RequestCounter.count``)."""
        child = self._children.get(values)
        if child is None:
            child = self.labels(*values)
        child.counts[bisect_left(self._bounds, value)] += 1  # ObserveChild.observe, inline
        child.sum += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in list(self._children.items()):
            running, buckets = 0, []
            for le, n in zip(self._les, child.counts, strict=True):
                running += n
                buckets.append((le, float(running)))
            family.add_metric(values, buckets, child.sum)
        yield family


class Metrics:
    def __init__(self) -> None:
        # The request path's metrics (RequestCounter, RequestHistogram) keep each label set's
        # child in one dict: ``labels()`` is a lookup, so nothing needs binding here.
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = RequestCounter(
            "geogate_requests", "Proxied requests by final status", ["code", "region"], r
        )
        self.duration = RequestHistogram(
            "geogate_request_duration_seconds",
            "Time from request to last byte",
            ["region"],
            r,
            LATENCY_BUCKETS,
        )
        # stream="true": a streamed answer's first byte, its first token (the TTFT objective
        # of deploy/prometheus; gateway.http.ttft for a stream that ended with none). "false":
        # a whole answer's, which is its end: seconds of generation that must not count
        # against time to first token.
        self.first_byte = RequestHistogram(
            "geogate_time_to_first_byte_seconds",
            'Time from request to a stream\'s first token (stream="true": a role chunk sent '
            "ahead of it is none; a stream that failed before any counts at least "
            "timeouts.first_byte_s, one that carried none at its end, one answered with a 4xx "
            'not at all) or to a whole answer\'s first body byte, its end (stream="false")',
            ["region", "stream"],
            r,
            LATENCY_BUCKETS,
        )
        self.attempts = RequestCounter(
            "geogate_upstream_attempts",
            "Attempts per upstream by outcome: ok (an answer under 500 passed on), status_5xx (an "
            "answer from 500 passed on), status_429/502/503 (failed over), refused, reset, "
            "timeout",
            ["upstream", "outcome"],
            r,
        )
        self.retries = Counter("geogate_retries", "Failovers to another candidate", registry=r)
        self.budget_exhausted = Counter(
            "geogate_retry_budget_exhausted", "Failovers refused by the retry budget", registry=r
        )
        # By the region that served it: a region whose backends die mid-answer (each a 200 in
        # geogate_requests_total) is what the cut-streams alert names. By whether the client
        # asked for a stream: the alert weighs stream="true" against the streams served, and
        # a whole answer cut mid-body (a non-SSE 502) is no stream.
        self.stream_aborted = RequestCounter(
            "geogate_stream_aborted",
            "Responses cut short after bytes reached the client, by cause (upstream_error; "
            "timeout: a silence of idle_s, or no first token within first_byte_s; "
            "total_timeout: this gateway's timeouts.total_s; drain: cut at a drain's "
            "server.drain_timeout_s), serving region and whether the "
            "client asked for a stream",
            ["cause", "region", "stream"],
            r,
        )
        # Streams are counted by the path their body took past the first token: "splice" (C,
        # gateway._splice) or "python" (the relay in gateway.http.relay), so an operator sees
        # whether the fast path runs (it needs the extension built, plain TCP to the client and
        # a chunked upstream body).
        self.stream_path = RequestCounter(
            "geogate_stream_bodies",
            "Streamed bodies relayed past their first token, by path (splice, python)",
            ["path"],
            r,
        )
        self.answered_whole = RequestCounter(
            "geogate_stream_answered_whole",
            "Stream requests an upstream answered with a whole JSON completion (it ignored "
            "stream: true), sent to the client as events, by upstream",
            ["upstream"],
            r,
        )
        self.by_country = RequestCounter(
            "geogate_client_requests",
            "Requests by client country and location source",
            ["country", "source"],
            r,
        )
        self.client_errors = RequestCounter(
            "geogate_client_errors",
            "Requests answered 5xx, by client country",
            ["country"],
            r,
        )
        self.missteered = RequestCounter(
            "geogate_missteered_requests",
            "Requests from clients nearer another region (labelled with it) than this one: "
            "fix DNS or the edge",
            ["region"],
            r,
        )
        self.edge_location = RequestCounter(
            "geogate_edge_location",
            "Signed client-location headers from the edge by verification result; only ok is "
            "believed (ok, no_keys, malformed, unknown_key, bad_signature, expired, "
            "wrong_audience)",
            ["result"],
            r,
        )
        # A drain does not change it: a drained region is not down (GeogateRegionDown).
        self.healthy = Gauge(
            "geogate_upstream_healthy",
            "1 when probed healthy, not ejected and not down for the fleet (drained or not)",
            ["upstream", "region"],
            registry=r,
        )
        # Per model, so an alert can name the model nobody can serve any more (per-upstream
        # health alone cannot say which models an upstream served).
        self.model_healthy = Gauge(
            "geogate_model_healthy_upstreams",
            "Routable upstreams serving the model (healthy and not drained), as this gateway "
            "sees them",
            ["model"],
            registry=r,
        )
        self.ejections = Counter(
            "geogate_upstream_ejections",
            "Upstreams ejected for failed requests (outlier detection)",
            ["upstream", "region"],
            registry=r,
        )
        self.rtt = Gauge(
            "geogate_upstream_rtt_ms", "EWMA of probe RTT", ["upstream", "region"], registry=r
        )
        self.in_flight = Gauge(
            "geogate_upstream_in_flight", "Open requests", ["upstream", "region"], registry=r
        )
        # A connection leak shows here (a soak review could count connections only by hooking
        # the process): at rest, about one per upstream, the probes' and load polls'.
        self.pool_idle = Gauge(
            "geogate_upstream_pool_idle_connections",
            "Kept-alive connections to upstreams idle in this worker's pool",
            registry=r,
        )
        self.state_stale = Gauge(
            "geogate_shared_state_stale_seconds",
            "Seconds since shared state (Redis) was last in sync; 0 when fresh",
            registry=r,
        )
        self.config_version = Gauge(
            "geogate_config_version", "Routing config version in use", registry=r
        )
        # /readyz's "ignoring the fleet config in Redis" as a number an alert can page on:
        # every gateway may refuse the same hand edit, and all of them serve on (a 200).
        self.config_refused = Gauge(
            "geogate_fleet_config_refused",
            "1 while this gateway ignores the fleet's document in Redis (one it cannot route "
            "on) and routes on the one before; else 0",
            registry=r,
        )
        self.geoip_reloads = Counter(
            "geogate_geoip_reloads", "GeoIP reloads by result", ["result"], registry=r
        )
        # Capacity of this worker: alert on in_flight / max_streams before clients see 503s.
        self.requests_in_flight = Gauge(
            "geogate_requests_in_flight", "/v1 requests in flight in this worker", registry=r
        )
        self.max_streams = Gauge(
            "geogate_max_streams",
            "/v1 requests this worker holds at once (server.max_streams, or fewer when the "
            "descriptor limit allows fewer)",
            registry=r,
        )
        self.protocol_refused = Counter(
            "geogate_protocol_refused",
            "Requests the HTTP/1.1 protocol refused before the app (no access line): 400 "
            "malformed, 408 head not complete in time, 431 head over the cap",
            ["code"],
            registry=r,
        )
        self.overloaded = Counter(
            "geogate_overload_rejected",
            "Requests answered 503 at once: limit=max_streams, /v1 requests over the streams in "
            "flight; limit=max_connections, any request over the open connections (gateway.h1)",
            ["limit"],
            registry=r,
        )
        # Each child made now, at 0: an increase() alert sees the first refusal, not a series
        # that appears with its value already 1.
        for limit in ("max_streams", "max_connections"):
            self.overloaded.labels(limit)
        for code in (400, 408, 431):
            self.protocol_refused.labels(str(code))
