"""Rolling windows over the traffic the sampler takes once a second (``gateway.traffic``):
rates, error rates and first-token percentiles per upstream, requests per client place."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.traffic import ServedKey, Tally


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # unix time of the take
    span_s: float  # the seconds it covers
    tally: Tally


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Window:
    def __init__(self, seconds: int) -> None:
        self._ticks: deque[Tick] = deque(maxlen=seconds)

    def add(self, tick: Tick) -> None:
        self._ticks.append(tick)

    def last(self, seconds: float) -> list[Tick]:
        """The newest ticks whose spans cover ``seconds`` (at least the newest one). By their
        spans, which the sampler measures on the monotonic clock, not by their wall-clock
        times: an NTP step back would have put a minute of ticks in the last ten seconds."""
        out: list[Tick] = []
        covered = 0.0
        for t in reversed(self._ticks):
            if out and covered >= seconds:
                break
            out.append(t)
            covered += t.span_s
        return out[::-1]

    @staticmethod
    def span(ticks: Iterable[Tick]) -> float:
        return sum(t.span_s for t in ticks)

    @staticmethod
    def attempts(ticks: list[Tick], uid: str) -> tuple[int, int]:
        """(attempts, failed attempts) of one upstream."""
        return (
            sum(t.tally.attempts.get(uid, 0) for t in ticks),
            sum(t.tally.failures.get(uid, 0) for t in ticks),
        )

    @staticmethod
    def ttft(ticks: list[Tick]) -> dict[str, list[float]]:
        """First-token samples per upstream, merged over ``ticks`` (unsorted): one pass for
        all upstreams, not one per upstream."""
        out: dict[str, list[float]] = {}
        for t in ticks:
            for uid, samples in t.tally.ttft_ms.items():
                out.setdefault(uid, []).extend(samples)
        return out

    @staticmethod
    def served(ticks: list[Tick]) -> tuple[dict[ServedKey, int], int]:
        """Requests per (place, upstream, model), and the total (past-the-cap ones too)."""
        out: dict[ServedKey, int] = {}
        total = 0
        for t in ticks:
            total += t.tally.unplaced
            for key, n in t.tally.served.items():
                out[key] = out.get(key, 0) + n
                total += n
        return out, total


def quantiles(samples: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) of ascending samples, rounded to 0.1 ms."""
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    return (
        None if p50 is None else round(p50, 1),
        None if p99 is None else round(p99, 1),
    )
