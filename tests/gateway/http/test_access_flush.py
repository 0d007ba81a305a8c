"""The app's access-log flush task (gateway.http.app.flush_access_log): a batch reaches the log
at the first of the worker's ticks (gateway.ticks) at least ACCESS_LOG_FLUSH_S after its first
line, and with no line waiting the task does not wake."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time

from gateway.defaults import ACCESS_LOG_FLUSH_S
from gateway.http.app import flush_access_log
from gateway.logs import BatchingStreamHandler
from gateway.runtime import access_log
from gateway.ticks import TIMER_TICK_S

IDLE_S = 4 * TIMER_TICK_S  # four ticks' worth of nothing: a task on a timer would have woken
WITHIN_S = 4 * TIMER_TICK_S  # a flush comes at most a tick and ACCESS_LOG_FLUSH_S after


class Counting(BatchingStreamHandler):
    flushes = 0

    def __init__(self) -> None:
        super().__init__(max_lines=100)
        self.out = io.StringIO()
        self.setStream(self.out)  # which flushes the old stream
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def written(handler: Counting, text: str, within_s: float) -> float:
    """Seconds until ``text`` is in the handler's stream (polled, with a deadline)."""
    t0 = time.monotonic()
    while text not in handler.out.getvalue():
        assert time.monotonic() - t0 < within_s, f"{text!r} not written in {within_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_a_batch_is_flushed_after_its_first_line_and_an_idle_log_never() -> None:
    handler = Counting()
    saved = access_log.handlers[:]
    access_log.handlers[:] = [handler]
    task = asyncio.create_task(flush_access_log())
    try:
        await asyncio.sleep(IDLE_S)
        assert handler.flushes == 0  # nothing logged: the task never woke to flush
        handler.add("one")
        took = await written(handler, "one\n", within_s=WITHIN_S)
        # Batched: the first tick at least ACCESS_LOG_FLUSH_S after the line (a timer may run
        # up to the loop's clock resolution early, hence the 10 ms).
        assert took >= ACCESS_LOG_FLUSH_S - 0.01
        flushes = handler.flushes
        await asyncio.sleep(IDLE_S)
        assert handler.flushes == flushes  # quiet again: no more flushes
        # A line from another thread (logging allows it) wakes the task as well.
        other = threading.Thread(target=handler.add, args=("two",))
        other.start()
        other.join()
        await written(handler, "two\n", within_s=WITHIN_S)
        assert handler.out.getvalue() == "one\ntwo\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        access_log.handlers[:] = saved
    assert handler.on_batch == []  # the ended loop is no longer called
