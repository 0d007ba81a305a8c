"""Rolling windows over the per-second traffic tallies."""

from __future__ import annotations

from gateway.http.dashboard.window import Tick, Window, percentile, quantiles
from gateway.traffic import Tally
from geodb.location import Location

HERE = Location(50.0, 8.0, "DE", "EU")


def tick(at: float, attempts: int = 0, failures: int = 0, ttft: list[float] | None = None) -> Tick:
    return Tick(
        at,
        1.0,
        Tally(
            attempts={"a": attempts},
            failures={"a": failures} if failures else {},
            ttft_ms={"a": ttft or []},
            served={(HERE, "a", "m"): attempts},
            unplaced=1,
        ),
    )


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 0.5) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert quantiles([1.04, 2.0]) == (1.0, 2.0)


def test_the_window_keeps_its_seconds_and_answers_for_the_last_ones() -> None:
    w = Window(3)
    for i in range(5):
        w.add(tick(float(i), attempts=10 * i, failures=i, ttft=[float(i)]))
    assert [t.at for t in w.last(60)] == [2.0, 3.0, 4.0]  # only three kept
    last2 = w.last(2)
    assert [t.at for t in last2] == [3.0, 4.0]
    assert Window.span(last2) == 2.0
    assert Window.attempts(last2, "a") == (70, 7)
    assert Window.ttft(last2) == {"a": [3.0, 4.0]}
    served, total = Window.served(last2)
    assert served == {(HERE, "a", "m"): 70}
    assert total == 72  # the requests past the place cap count in the total


def test_the_last_seconds_are_counted_by_span_not_by_wall_clock() -> None:
    # The wall clock stepped back an hour between ticks (NTP): the last 2 s are still the
    # last two one-second ticks, not everything since the earlier wall time.
    w = Window(10)
    for at in (5000.0, 5001.0, 5002.0, 1403.0, 1404.0):
        w.add(tick(at))
    assert [t.at for t in w.last(2)] == [1403.0, 1404.0]


def test_an_empty_window() -> None:
    assert Window(60).last(10) == []
