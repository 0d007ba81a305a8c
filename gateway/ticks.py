"""One clock for a worker's background wake-ups: its periodic waits (the load poll, the GeoIP
file's check, DNS discovery, the dashboard's sample, the server's tick, the access log's flush)
end on a tick, every TIMER_TICK_S on the event loop's clock, so one wake-up of the process
runs all that is due at once.

Each wake-up of an idle process costs far more than its callback: the kernel's switch back
to it, the event loop's turn, and the caches its code finds cold. Under traffic a worker's
background work (four load polls, five log flushes, a dashboard sample and the server's tick
each second) woke it apart each time; on the tick they share wake-ups. Together with the
leaner scrape and sample, the loop's waits per paced stream went 8.9 -> 8.2
(bench/results/round13/split_streams16_background). Linux's round_jiffies() does the same for
kernel timers. The health probes stay off it: each upstream's probe has a random offset within
its round (health.jitter), so that a fleet's probes do not arrive together.

On uvloop a timer's due time is kept in whole milliseconds, so waits aimed here at one tick
come due in the same millisecond and run in one turn; now and then one comes a millisecond
later (uvloop reads its clock again as it starts a timer, and a new millisecond may have
begun). Each process has its own phase (from its pid): a host's workers, which share the
clock, do not scrape an upstream in the same millisecond.
"""

from __future__ import annotations

import math
import os
from typing import Final

TIMER_TICK_S: Final = 0.25  # the load poll's default interval: the most frequent periodic wait
# A wait of this or more is lengthened to end on a tick (by less than a quarter of it); a
# shorter one only when it is a whole number of ticks, which the tick lengthens by nothing:
# a load.poll_interval_s of 0.3 s stays 0.3 s, not 0.5.
ALIGN_FROM_S: Final = 4 * TIMER_TICK_S
# A wake-up lands up to a millisecond or so after its tick (the loop's clock is cached per
# turn, and the kernel's timers have slack): a time within this of a tick means that tick.
TICK_TOLERANCE_S: Final = 0.005
_GOLDEN: Final = (math.sqrt(5) - 1) / 2  # consecutive pids get phases far apart


def phase(pid: int | None = None) -> float:
    """This process's offset of its ticks from the clock's multiples of TIMER_TICK_S."""
    return ((os.getpid() if pid is None else pid) * _GOLDEN) % 1.0 * TIMER_TICK_S


def aligned(period: float) -> bool:
    """Whether a wait of ``period`` goes on the tick: long enough, or a whole number of ticks."""
    ticks = period / TIMER_TICK_S
    return period >= ALIGN_FROM_S or (ticks >= 1 and abs(ticks - round(ticks)) < 1e-9)


def on_tick(at: float, period: float, offset: float = 0.0) -> float:
    """``at`` (a time on the loop's clock, ``period`` after the last wake-up of what waits),
    moved later to the first tick from it (``offset``: the process's phase), when ``period``
    is ``aligned``; else ``at`` itself: a load.poll_interval_s of 0.1 s still polls ten times
    a second."""
    if not aligned(period):
        return at
    return math.ceil((at - offset - TICK_TOLERANCE_S) / TIMER_TICK_S) * TIMER_TICK_S + offset


def next_tick(now: float, offset: float = 0.0) -> float:
    """The first tick still ahead of ``now``, by more than TICK_TOLERANCE_S."""
    tick = TIMER_TICK_S
    return math.floor((now - offset + TICK_TOLERANCE_S) / tick) * tick + tick + offset


class Beat:
    """A periodic wait's due times, each counted from the last one's, not from when the loop
    got round to it: a wake-up a few milliseconds late keeps the rhythm instead of missing a
    tick. After a round that overran its period, the next is due at once, then on the tick
    again."""

    __slots__ = ("due", "offset")

    def __init__(self, now: float, offset: float | None = None) -> None:
        self.due = now
        self.offset = phase() if offset is None else offset

    def wait(self, now: float, period: float) -> float:
        """The wait from ``now`` until the next due time, ``period`` after the last one's."""
        self.due = max(on_tick(self.due + period, period, offset=self.offset), now)
        return self.due - now
