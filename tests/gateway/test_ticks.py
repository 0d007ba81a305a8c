"""The workers' shared tick: periodic waits end on one, so one wake-up runs them all."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gateway.ticks import TICK_TOLERANCE_S, TIMER_TICK_S, next_tick, on_tick


def on_a_tick(t: float, within_s: float = 1e-9) -> bool:
    return abs(t - round(t / TIMER_TICK_S) * TIMER_TICK_S) <= within_s


@pytest.mark.parametrize("now", [0.0, 10.0, 10.2503, 10.1, 123456.789, 10.2449])
@pytest.mark.parametrize("period", [0.25, 0.3, 1.0, 2.2, 5.0])
def test_a_period_of_a_tick_or_more_ends_on_the_first_tick_from_its_end(
    now: float, period: float
) -> None:
    at = on_tick(now + period, period)
    assert on_a_tick(at)
    assert now + period - TICK_TOLERANCE_S <= at < now + period + TIMER_TICK_S


def test_a_wake_up_just_after_its_tick_keeps_its_period() -> None:
    # Woken 0.3 ms after 10.25 (the clock is read per turn): 0.25 s on is 10.5, not 10.75.
    assert on_tick(10.2503 + 0.25, 0.25) == 10.5
    assert on_tick(10.2503 + 1.0, 1.0) == 11.25


@pytest.mark.parametrize("period", [0.0, 0.05, 0.1, 0.2499])
def test_a_period_shorter_than_a_tick_is_kept(period: float) -> None:
    assert on_tick(10.0123 + period, period) == 10.0123 + period


@pytest.mark.parametrize("now", [0.0, 10.0, 10.001, 10.1, 10.2449, 10.246, 10.2503])
def test_the_next_tick_is_ahead_by_more_than_the_tolerance(now: float) -> None:
    at = next_tick(now)
    assert on_a_tick(at)
    assert now + TICK_TOLERANCE_S < at <= now + TIMER_TICK_S + TICK_TOLERANCE_S


def test_waits_of_different_periods_run_in_one_turn_of_uvloop() -> None:
    """What it is for: a 1 s wait and a poll's rounds of a tick, started at different times
    off any tick, come due on the same millisecond of uvloop's timers and run in one turn
    (one reading of the loop's clock)."""

    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        rounds: list[float] = []
        await asyncio.sleep(next_tick(loop.time()) - loop.time() + 0.03)  # off any tick
        loop.call_at(on_tick(loop.time() + 1.0, 1.0), done.set_result, loop.time)

        def round_() -> None:  # each round a tick after the last one's start, as the poll's
            rounds.append(loop.time())
            if not done.done():
                loop.call_at(on_tick(loop.time() + TIMER_TICK_S, TIMER_TICK_S), round_)

        await asyncio.sleep(0.07)
        round_()
        clock = await done
        return clock(), rounds

    one_s, rounds = uvloop.run(main())
    assert one_s in rounds[1:], (one_s, rounds)  # the same turn as a round: one wake-up
    # The clock is read as the turn starts: a millisecond or so after the tick.
    assert all(on_a_tick(t, TICK_TOLERANCE_S) for t in rounds[1:]), rounds
