"""``geogate world``'s arguments checked against each other before anything starts, each
mistake one line (CLIError). Here rather than in world_run.py, which is near its size limit."""

from __future__ import annotations

import math

from gateway.cli.errors import CLIError

MAX_EVENT_S = 3600.0  # an hour of traffic per event: --event-s inf ran for ever

# Per site and topology, one after another. A steady-state request is the pair's RTT plus the
# backend's TTFT (its 8 tokens come at once): about 0.35 s at the slowest default pair, Sydney
# to eu-central, so 10,000 is about an hour, as --event-s's bound; a p99 needs a few hundred.
# Unbounded, --requests 10**9 ran for years and kept every sample in memory.
MAX_REQUESTS = 10_000


def check_requests(requests: int) -> None:
    if not 1 <= requests <= MAX_REQUESTS:
        raise CLIError(
            f"world: --requests must be at least 1 and at most {MAX_REQUESTS:,}, got {requests}"
        )


def check_event_s(event_s: float) -> None:
    if not (math.isfinite(event_s) and 0 < event_s <= MAX_EVENT_S):  # NaN, inf
        raise CLIError(
            f"world: --event-s must be a positive number of seconds, at most {MAX_EVENT_S:g}, "
            f"got {event_s}"
        )


def check_event_regions(events: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Every event is there to show where traffic goes when a region is in trouble: that needs
    a second region. With only the origin, each hit the origin, every topology's rows read
    "never", and the run exited 0 (world.event_regions falls back to the origin only when it is
    the one region serving any site, and another can take its traffic)."""
    if events and len(regions) < 2:
        raise CLIError(
            f"world: --events {' '.join(events)}: no region other than the origin "
            f"{regions[0]!r} to move traffic to: add one to --regions, or give --events with "
            "nothing after it (the steady state only)"
        )
