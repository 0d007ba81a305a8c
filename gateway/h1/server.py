"""uvicorn's Server with its main loop woken once a second rather than ten times.

uvicorn's loop sleeps 0.1 s between ticks to notice ``should_exit`` (a signal, or the app's
drain done) and refreshes the Date header every tenth tick. Ten wake-ups a second were about
a quarter of an idle worker's (a `perf trace -s` while exploring, not kept), and a wake-up of
an idle process costs it far more than the few lines it runs: the caches are cold.
bench/idle_cpu.py measures what an idle gateway spends: 5.80 ms/s before this, 3.97 after
(schedstat; bench/results/round8/idle_tick.md).

Here the loop waits for the next second or for ``should_exit`` being set, whichever comes
first: the Date header is as fresh as before (refreshed each second, it says whole seconds),
and an exit is as prompt.
"""

from __future__ import annotations

import asyncio

import uvicorn

from gateway.defaults import SERVER_TICK_S
from gateway.ticks import Beat

# uvicorn's on_tick refreshes the Date header when its counter is a multiple of 10 (its tick
# is 0.1 s); each of our ticks is a second, so each passes this one.
TICK_COUNTER = 0


class Server(uvicorn.Server):
    _loop: asyncio.AbstractEventLoop | None = None
    _waiter: asyncio.Future[None] | None = None
    _exit = False

    # uvicorn sets should_exit from its signal handler and gateway.server's stop() from the
    # app's drain: either wakes the main loop at once (call_soon_threadsafe: a signal handler
    # may run anywhere in the loop's own code).
    @property
    def should_exit(self) -> bool:
        return self._exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit = value
        if value and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def main_loop(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        should_exit = await self.on_tick(TICK_COUNTER)
        beat = Beat(loop.time())  # on the worker's tick (gateway.ticks), with the background work
        while not should_exit:
            if not self._exit:  # else it was set while on_tick ran: no wait
                waiter = self._waiter = loop.create_future()
                timer = loop.call_later(beat.wait(loop.time(), SERVER_TICK_S), self._wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            should_exit = await self.on_tick(TICK_COUNTER)
