"""The workers' shared tick: periodic waits end on one, so one wake-up runs them all."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import uvloop

from gateway.ticks import (
    TICK_TOLERANCE_S,
    TIMER_TICK_S,
    Beat,
    aligned,
    next_tick,
    on_tick,
    phase,
)

OFFSET = 0.0731  # a process's phase


def on_a_tick(t: float, offset: float = 0.0, within_s: float = 1e-9) -> bool:
    return abs(t - offset - round((t - offset) / TIMER_TICK_S) * TIMER_TICK_S) <= within_s


@pytest.mark.parametrize("now", [0.0, 10.0, 10.2503, 10.1, 123456.789, 10.2449])
@pytest.mark.parametrize("period", [0.25, 0.5, 1.0, 2.2, 5.0])
@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_an_aligned_period_ends_on_the_first_tick_from_its_end(
    now: float, period: float, offset: float
) -> None:
    at = on_tick(now + period, period, offset=offset)
    assert on_a_tick(at, offset)
    assert now + period - TICK_TOLERANCE_S <= at < now + period + TIMER_TICK_S


@pytest.mark.parametrize("period", [0.0, 0.05, 0.1, 0.2499, 0.26, 0.3, 0.49, 0.9])
def test_a_short_period_not_a_whole_number_of_ticks_is_kept(period: float) -> None:
    # A load.poll_interval_s of 0.3 s stays 0.3 s: the tick would make it 0.5.
    assert not aligned(period)
    assert on_tick(10.0123 + period, period) == 10.0123 + period


@pytest.mark.parametrize("period", [0.25, 0.5, 0.75, 1.0, 1.1, 2.0, 60.0])
def test_whole_ticks_and_a_second_or_more_are_aligned(period: float) -> None:
    assert aligned(period)


@pytest.mark.parametrize("now", [0.0, 10.0, 10.001, 10.1, 10.2449, 10.246, 10.2503])
@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_the_next_tick_is_ahead_by_more_than_the_tolerance(now: float, offset: float) -> None:
    at = next_tick(now, offset=offset)
    assert on_a_tick(at, offset)
    assert now + TICK_TOLERANCE_S < at <= now + TIMER_TICK_S + TICK_TOLERANCE_S


@pytest.mark.parametrize("lag", [0.0, 0.0003, 0.006, 0.02, 0.2])
def test_a_beat_keeps_its_rhythm_however_late_the_wake_up(lag: float) -> None:
    """Counted from the tick it aimed at, not from when the loop got round to it: a wake-up
    20 ms late does not skip a tick (a busy worker would poll half as often)."""
    beat = Beat(10.1, offset=0.0)
    due = 10.1 + beat.wait(10.1, TIMER_TICK_S)
    assert due == 10.5  # the first tick a period from the start
    for n in range(1, 6):
        woke = due + lag
        due = woke + beat.wait(woke, TIMER_TICK_S)
        assert due == pytest.approx(10.5 + n * TIMER_TICK_S)


def test_a_beat_after_an_overrun_is_due_at_once_then_on_the_tick_again() -> None:
    beat = Beat(10.0, offset=0.0)
    assert beat.wait(10.0, 1.0) == pytest.approx(1.0)
    assert beat.wait(12.3, 1.0) == 0.0  # the round took 1.3 s: the next one now
    assert beat.wait(12.31, 1.0) == pytest.approx(13.5 - 12.31)  # then on a tick


def test_each_process_has_its_own_phase_within_a_tick() -> None:
    phases = {phase(pid) for pid in range(1000, 1016)}
    assert len(phases) == 16 and all(0 <= p < TIMER_TICK_S for p in phases)
    # Consecutive pids (a host's workers, forked together) are spread over the tick.
    ordered = sorted(phase(pid) for pid in range(1000, 1004))
    assert min(b - a for a, b in itertools.pairwise(ordered)) > TIMER_TICK_S / 8
    assert phase() == phase()


def test_waits_of_different_periods_come_due_together_on_uvloop() -> None:
    """A 1 s wait and a poll's rounds of a tick, started at different times off any tick on
    uvloop's clock and woken as late as uvloop wakes them, aim at the very same due time.
    That they then run in one turn is uvloop's doing (whole-millisecond due times; now and
    then a millisecond apart, as it reads its clock again when it starts a timer): not
    asserted here, as a wake-up's clock on a busy machine is not the test's to promise."""

    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.03)
        one_s = Beat(loop.time())
        due = loop.time() + one_s.wait(loop.time(), 1.0)
        await asyncio.sleep(0.07)
        poll = Beat(loop.time())
        dues: list[float] = []
        while loop.time() < due + TIMER_TICK_S:  # as the load poll's rounds
            await asyncio.sleep(poll.wait(loop.time(), TIMER_TICK_S))
            dues.append(poll.due)
        return due, dues

    due, dues = uvloop.run(main())
    assert all(on_a_tick(d, phase()) for d in [due, *dues]), (due, dues)
    assert due in dues  # the very same float: the same millisecond of uvloop's timers
