"""One clock for a worker's background wake-ups: its periodic waits (the load poll, the health
probes' rounds, the dashboard's sample, the server's tick, the access log's flush, the GeoIP
file's check) end on a tick, a multiple of TIMER_TICK_S on the event loop's clock, so one
wake-up of the process runs all that is due at once.

Each wake-up of an idle process costs far more than its callback: the kernel's switch back
to it, the event loop's turn, and the caches its code finds cold. A worker under paced
streams spent about 3 ms of CPU a second on background work, woken apart some twelve times a
second (bench/results/round13); the same work on one tick wakes it four times. Linux's
round_jiffies() does the same for kernel timers.

On uvloop a timer's due time is kept in whole milliseconds from the loop's cached clock, so
waits computed here from ``loop.time()`` land on the same millisecond and run in one turn.
Pure: times in, a wait out.
"""

from __future__ import annotations

import math
from typing import Final

TIMER_TICK_S: Final = 0.25  # the load poll's default interval: the most frequent periodic wait
# A wake-up lands up to a millisecond or so after its tick (the loop's clock is cached per
# turn, and the kernel's timers have slack): a wait counted from then still means that tick.
TICK_TOLERANCE_S: Final = 0.005


def on_tick(at: float, period: float, tick: float = TIMER_TICK_S) -> float:
    """``at`` (a time on the loop's clock, ``period`` after the last wake-up of what waits),
    moved later by less than a tick to end on one. A period shorter than a tick is kept as
    it is: a load.poll_interval_s of 0.1 s still polls ten times a second."""
    if period < tick:
        return at
    return math.ceil((at - TICK_TOLERANCE_S) / tick) * tick


def next_tick(now: float, tick: float = TIMER_TICK_S) -> float:
    """The first tick still ahead of ``now``, by more than TICK_TOLERANCE_S."""
    return math.floor((now + TICK_TOLERANCE_S) / tick) * tick + tick
