"""A stream's idle and total deadline, kept by a time stamp per chunk rather than a timer per
chunk.

``asyncio.timeout``'s ``reschedule`` per chunk cancels one timer handle and schedules another,
and asks for the running loop, which in CPython 3.11 is a ``getpid()`` system call each time:
per streamed chunk, on the path every token takes. Here a chunk costs one ``loop.time()`` (the
loop's cached clock), and the timer fires at most once per ``idle_s`` to look at the stamp.

Until a stream's first token (``first_s``, ``token()``), a silence is not cut before the first
token's own deadline: a server may send its role chunk (no token) at once and then prefill a
long prompt, which is ``timeouts.first_byte_s``'s wait, not a silence of ``idle_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from gateway.defaults import CLIENT_PROBE_S

# A loop may run a timer up to its clock resolution early; a check this close to the due
# time counts as due rather than re-arming for a few microseconds.
EARLY_S = 0.001


class TotalTimeout(TimeoutError):
    """The total deadline (``left_s``) passed: the caller's own limit on the whole stream,
    not a silence of its source (a plain TimeoutError)."""


class Stamped(Protocol):
    """What else may stamp activity: gateway._splice's Relay, while it carries a stream (its
    ``last`` is CLOCK_MONOTONIC, the clock of both asyncio's and uvloop's ``loop.time()``).
    ``probe()`` is called after ``probe_s`` of silence, and again every ``probe_s`` while it
    lasts: the relay asks the client's socket whether the client left (and if so ends)."""

    @property
    def last(self) -> float: ...

    def probe(self) -> object: ...


class Watchdog:
    """Cancel the current task when no ``touch()`` came for ``idle_s`` seconds, or ``left_s``
    seconds from now, whichever comes first; on leaving the ``with`` block, that
    cancellation becomes TimeoutError, as with ``asyncio.timeout`` (TotalTimeout, a
    TimeoutError, where it was the ``left_s`` deadline). A cancellation from elsewhere (the
    client leaving, a drain) passes through unchanged.

    ``first_s``: seconds from now within which a stream's first token is due; until
    ``token()`` says it came, no silence is cut before then. The later of the two deadlines
    applies, not the first one: a chunk the token test does not recognise (a tool call's
    arguments, reasoning text) keeps the stream alive as any chunk does."""

    __slots__ = (
        "_cancelling",
        "_deadline",
        "_expired",
        "_first",
        "_handle",
        "_idle_s",
        "_loop",
        "_probe_s",
        "_task",
        "_total",
        "clock",
        "held",
        "last",
        "source",
    )

    def __init__(
        self,
        idle_s: float,
        left_s: float,
        task: asyncio.Task[Any] | None = None,
        probe_s: float = CLIENT_PROBE_S,
        first_s: float | None = None,
    ) -> None:
        # ``task``: the current one, where the caller knows it (gateway.runtime's
        # current_task): each lookup of the running loop is a getpid() in CPython 3.11.
        if task is None:
            task = asyncio.current_task()
        assert task is not None, "a watchdog guards the task that makes it"
        self._loop = task.get_loop()
        self._task = task
        self._idle_s = idle_s
        self._probe_s = probe_s
        self._deadline = self._loop.time() + left_s
        # The first token's deadline on the loop's clock, until token(); None: none to wait for
        self._first = None if first_s is None else self._loop.time() + first_s
        self._expired = False
        self._total = False  # the deadline that fired was left_s's, not idle_s's
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.clock = self._loop.time  # the loop's clock: a per-chunk caller may stamp ``last``
        self.last = self.clock()
        self.source: Stamped | None = None  # its stamps count as activity too, while set
        # True while the client holds the stream back (its connection's writes paused): the
        # upstream's reading is paused by us then, and its silence is not its own.
        self.held: Callable[[], bool] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def touch(self) -> None:
        """Activity now: the idle deadline starts again (``last = clock()``; gateway.http.relay's
        piped sink does the same inline)."""
        self.last = self.clock()

    def token(self) -> None:
        """The stream's first token came (once a stream, not per chunk): from now on a silence
        of idle_s is cut. The timer may stand at the first token's later deadline: re-armed."""
        if self._first is None:
            return
        self._first = None
        self.last = self.clock()
        if self._handle is not None:
            self._handle.cancel()
            self._arm()

    def _last(self) -> float:
        return self.last if self.source is None else max(self.last, self.source.last)

    def _check(self) -> None:
        now, last = self._loop.time(), self._last()
        if self.held is not None and now + EARLY_S >= last + self._idle_s and self.held():
            # Idle because the client reads nothing, not the upstream: not an upstream timeout
            # (which would count against its health). A client that never reads again is cut
            # by its connection's own stall limit (gateway.h1: a keep-alive time).
            self.last = last = now
        due = last + self._idle_s
        if self._first is not None and self._first > due:  # no cut before the first token's
            due = self._first
        due = min(due, self._deadline)
        if now + EARLY_S >= due:
            self._expired = True
            self._total = now + EARLY_S >= self._deadline
            self._handle = None
            self._task.cancel()
            return
        if self.source is None:  # nothing to ask: back at the deadline
            self._handle = self._loop.call_at(due, self._check)
            return
        # A silence of probe_s or more: the source asks its client (a splice, whose client's
        # reads are paused), and again every probe_s while the silence lasts.
        probe_at = last + self._probe_s
        if now + EARLY_S >= probe_at:
            self.source.probe()
            probe_at = now + self._probe_s
        self._handle = self._loop.call_at(min(due, probe_at), self._check)

    def watch(self, source: Stamped | None) -> None:
        """Count ``source``'s stamps as activity too, and probe it after a silence of
        probe_s; None: no longer (its stamps so far stay counted, in ``last``). Only a stream
        with a source has a timer every probe_s."""
        if source is None and self.source is not None:
            self.last = max(self.last, self.source.last)
        self.source = source
        if source is not None and self._handle is not None:
            self._handle.cancel()
            self._arm()

    def _arm(self) -> None:
        """The timer at the idle or total deadline, or at the source's probe if sooner."""
        last = self._last()
        due = last + self._idle_s  # inline, as in _check: once per stream, no call
        if self._first is not None and self._first > due:
            due = self._first
        due = min(due, self._deadline)
        if self.source is not None:
            due = min(due, last + self._probe_s)
        self._handle = self._loop.call_at(due, self._check)

    def __enter__(self) -> Watchdog:
        self._cancelling = self._task.cancelling()
        self._arm()  # a source watched before, or given later (watch), brings in its probe
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Ours only if no other cancellation is pending on top of it (asyncio.timeout's rule).
        if (
            self._expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise (TotalTimeout if self._total else TimeoutError) from exc
