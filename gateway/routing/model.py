"""The router's vocabulary: what it sees (upstreams in a snapshot, request facts) and what it
decides (candidates in order, exclusions, the reason), as immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from geodb.location import Location

Origin = Literal["client", "self"]
NetSource = Literal["measured", "distance"]
# Where a candidate's load term came from: its own fresh TTFT, the model's median over the
# upstreams that have one (a prior for an idle backend), or nowhere (no fresh TTFT anywhere:
# only the queue counts, at defaults.QUEUED_REQUEST_MS a request per slot).
LoadSource = Literal["measured", "prior", "unknown"]


@dataclass(frozen=True, slots=True)
class RegionPoint:
    id: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """One upstream as the router sees it: config merged with the latest observations."""

    id: str
    region: str
    models: frozenset[str]
    weight: float = 1.0
    bias_ms: float = 0.0
    drained: bool = False
    healthy: bool = True
    rtt_ms: float | None = None  # measured from this gateway (EWMA of probes)
    ttft_ms: float | None = None  # backend's time to first token (EWMA), when known
    queue_depth: float | None = None  # requests waiting at the backend, when known
    slots: int = 16
    url: str = ""  # base URL, no trailing slash: the proxy's target, not a routing input


@dataclass(frozen=True, slots=True)
class Snapshot:
    upstreams: tuple[UpstreamView, ...]
    regions: Mapping[str, RegionPoint]
    # Requests this gateway has open to each upstream. It changes on every request, so the
    # store hands over its live counter mapping instead of rebuilding the snapshot each time.
    in_flight: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str
    location: Location


class Outcome(StrEnum):
    ROUTED = "routed"
    MODEL_NOT_FOUND = "model_not_found"  # no upstream anywhere serves the model
    NO_CANDIDATE = "no_candidate"  # some serve it, none is usable (health, drain, residency)


class Reason(StrEnum):
    """Why the first candidate was chosen (or why there is none). The values are what the
    ``geogate-route`` header and the explain output show."""

    LOWEST_SCORE = "lowest-score"
    P2C_IN_BAND = "p2c-in-band"
    STANDBY = "standby"  # only weight-0 upstreams were left
    PANIC = "panic"  # too few healthy: unhealthy ones were kept as candidates
    FAILOVER = "failover"  # a later candidate answered (the proxy's word, not the router's)
    NO_UPSTREAM_SERVES = "no upstream serves the model"
    NOTHING_USABLE = "nothing usable"


class ExclusionKind(StrEnum):
    RESIDENCY = "residency rule"
    DRAINED = "drained"
    UNHEALTHY = "unhealthy"


class Candidate(NamedTuple):
    """An immutable value like the dataclasses here, but a NamedTuple: one is built per
    upstream per request, and tuple construction is ~3x cheaper than a frozen dataclass's."""

    upstream: UpstreamView
    score_ms: float
    net_ms: float
    net_source: NetSource
    load_ms: float
    healthy: bool
    standby: bool
    load_source: LoadSource


@dataclass(frozen=True, slots=True)
class Exclusion:
    upstream_id: str
    region: str
    kind: ExclusionKind
    rule: str | None = None  # the residency rule's name, for kind RESIDENCY

    @property
    def reason(self) -> str:
        return f"{self.kind} {self.rule}" if self.rule else str(self.kind)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    order: tuple[Candidate, ...]  # order[0] is the choice; the rest is the failover list
    excluded: tuple[Exclusion, ...]
    reason: Reason
    residency: str | None = None  # the rule that applied, if any
    band: tuple[str, ...] = field(default=())  # upstream ids within the tolerance band

    @property
    def chosen(self) -> Candidate | None:
        return self.order[0] if self.order else None

    def header(self, index: int = 0, attempts: int | None = None) -> str:
        """Summary for the ``geogate-route`` response header; ``index`` is the candidate that
        answered (a failover when > 0), ``attempts`` how many were tried (default: each up to
        it; fewer where ones drained since the routing were passed by)."""
        if not self.order:
            return f"outcome={self.outcome}"
        c = self.order[index]
        reason = self.reason if index == 0 else Reason.FAILOVER
        h = f"region={c.upstream.region}; upstream={c.upstream.id}; reason={reason}"
        if self.residency:
            h += f"; residency={self.residency}"
        return h + (f"; attempts={attempts or index + 1}" if index else "")

    def failure_header(self, attempts: int, index: int | None = None) -> str:
        """Summary for the ``geogate-route`` header of the gateway's own error answer after
        routing: the outcome alone where no upstream was tried (model not found, nothing
        usable), else the last one tried (``index``; default: ``attempts`` - 1) and how many
        were: whom to look at for a 502/504."""
        if not self.order or attempts < 1:
            h = f"outcome={self.outcome}"
        else:
            last = attempts - 1 if index is None else index
            c = self.order[min(last, len(self.order) - 1)]
            h = f"outcome=failed; region={c.upstream.region}; upstream={c.upstream.id}"
        if self.residency:
            h += f"; residency={self.residency}"
        return h + (f"; attempts={attempts}" if attempts else "")

    def explain(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "reason": str(self.reason),
            "residency": self.residency,
            "band": list(self.band),
            "candidates": [
                {
                    "upstream": c.upstream.id,
                    "region": c.upstream.region,
                    "score_ms": round(c.score_ms, 2),
                    "net_ms": round(c.net_ms, 2),
                    "net_source": c.net_source,
                    "load_ms": round(c.load_ms, 2),
                    "load_source": c.load_source,
                    "bias_ms": c.upstream.bias_ms,
                    "weight": c.upstream.weight,
                    "healthy": c.healthy,
                    "standby": c.standby,
                }
                for c in self.order
            ],
            "excluded": [
                {"upstream": e.upstream_id, "region": e.region, "reason": e.reason}
                for e in self.excluded
            ],
        }
