"""Prometheus metrics of one gateway process (its own registry, not the global one)."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

# Buckets reach minutes: an LLM response can legitimately stream that long.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        # metric.labels(...) checks and converts its values and takes a lock on every call
        # (~1 us, bench/results/profile.md); the request path asks for the same few children
        # again and again, so each is bound once here. Bounded as the metric itself is: by
        # the label values it has seen.
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "geogate_requests", "Proxied requests by final status", ["code", "region"], registry=r
        )
        self.duration = Histogram(
            "geogate_request_duration_seconds",
            "Time from request to last byte",
            ["region"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_byte = Histogram(
            "geogate_time_to_first_byte_seconds",
            "Time from request to the first body byte sent to the client",
            ["region"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "geogate_upstream_attempts",
            "Attempts per upstream by outcome (ok, refused, reset, status_503, timeout, ...)",
            ["upstream", "outcome"],
            registry=r,
        )
        self.retries = Counter("geogate_retries", "Failovers to another candidate", registry=r)
        self.budget_exhausted = Counter(
            "geogate_retry_budget_exhausted", "Failovers refused by the retry budget", registry=r
        )
        self.stream_aborted = Counter(
            "geogate_stream_aborted",
            "Responses cut short after bytes reached the client",
            ["cause"],
            registry=r,
        )
        self.by_country = Counter(
            "geogate_client_requests",
            "Requests by client country and location source",
            ["country", "source"],
            registry=r,
        )
        self.client_errors = Counter(
            "geogate_client_errors",
            "Requests answered 5xx, by client country",
            ["country"],
            registry=r,
        )
        self.missteered = Counter(
            "geogate_missteered_requests",
            "Requests from clients nearer another region (labelled with it) than this one: "
            "fix DNS or the edge",
            ["region"],
            registry=r,
        )
        self.edge_location = Counter(
            "geogate_edge_location",
            "Signed client-location headers from the edge by verification result; only ok is "
            "believed (ok, no_keys, malformed, unknown_key, bad_signature, expired, "
            "wrong_audience)",
            ["result"],
            registry=r,
        )
        self.healthy = Gauge(
            "geogate_upstream_healthy", "1 when routable", ["upstream", "region"], registry=r
        )
        # Per model, so an alert can name the model nobody can serve any more (per-upstream
        # health alone cannot say which models an upstream served).
        self.model_healthy = Gauge(
            "geogate_model_healthy_upstreams",
            "Routable upstreams serving the model, as this gateway sees them",
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
        self.state_stale = Gauge(
            "geogate_shared_state_stale_seconds",
            "Seconds since shared state (Redis) was last in sync; 0 when fresh",
            registry=r,
        )
        self.config_version = Gauge(
            "geogate_config_version", "Routing config version in use", registry=r
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
        self.overloaded = Counter(
            "geogate_overload_rejected",
            "/v1 requests answered 503 at once because max_streams were in flight",
            registry=r,
        )

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, bound once. Only for metrics never ``remove()``d."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]
