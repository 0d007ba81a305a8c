"""One sampler per worker: once a second it takes the traffic counts and appends a point to
the sparklines' history; while someone looks it also builds the state (``state.build``) and
encodes the result ONCE as a server-sent event that every open page receives: a hundred pages
cost one snapshot a second, not a hundred polls. While nobody looks, the point is read from
the few figures it shows (``state.point_rows``) and the state is built at the next look.

Between samples it watches what turns a region red (health, drain, ejection, the fleet's
verdict, shared state going stale) ten times a second, and pushes a change at once; only while
someone looks (a page open, or the state read within DASHBOARD_IDLE_AFTER_S): the first look
after a quiet spell gets a state built then, and wakes the watch.

A slow page never queues frames: it gets the newest one when it is ready for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.exceptions import RedisError

from gateway.defaults import (
    DASHBOARD_AUDIT_REFRESH_S,
    DASHBOARD_HISTORY_S,
    DASHBOARD_IDLE_AFTER_S,
    DASHBOARD_SAMPLE_S,
    DASHBOARD_SHARE_WINDOW_S,
    DASHBOARD_WATCH_S,
)
from gateway.errors import AuditUnwritable
from gateway.http.dashboard import state
from gateway.http.dashboard.window import Tick, Window, quantiles
from gateway.runtime import Runtime
from gateway.ticks import on_tick, phase

log = logging.getLogger("geogate.dashboard")
AUDIT_SHOWN = 20  # the page's "recent changes"
RETRY_MS = 2000  # EventSource reconnects this long after a lost stream


def point(snapshot: dict[str, Any], tick: Tick) -> dict[str, Any]:
    """One second of the sparklines: per upstream [requests/s, error %, TTFT p50, in-flight,
    RTT, queue]; per region [requests/s, failed/s, TTFT p50, TTFT p99]. From this second's
    counts alone (the state's numbers are rolling means)."""
    t = tick.tally
    span = tick.span_s or 1.0
    ups: dict[str, list[float | None]] = {}
    for u in snapshot["upstreams"]:
        uid = u["id"]
        n, failed = t.attempts.get(uid, 0), t.failures.get(uid, 0)
        p50, _ = quantiles(sorted(t.ttft_ms.get(uid, ())))
        ups[uid] = [
            round(n / span, 2),
            round(100 * failed / n, 1) if n else None,
            p50,
            u["in_flight"],
            u["rtt_ms"],
            u["queue_depth"],
        ]
    regions: dict[str, list[float | None]] = {}
    for r in snapshot["regions"]:
        ids = r["upstreams"]
        n = sum(t.attempts.get(uid, 0) for uid in ids)
        failed = sum(t.failures.get(uid, 0) for uid in ids)
        p50, p99 = quantiles(sorted(ms for uid in ids for ms in t.ttft_ms.get(uid, ())))
        regions[r["id"]] = [round(n / span, 2), round(failed / span, 2), p50, p99]
    return {"t": round(tick.at, 3), "u": ups, "r": regions}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Sampler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.window = Window(DASHBOARD_SHARE_WINDOW_S)
        self.history: deque[dict[str, Any]] = deque(maxlen=DASHBOARD_HISTORY_S)
        self.state: dict[str, Any] = {}
        self.audit: list[dict[str, str]] = []
        self.audit_error: str | None = None
        self._frame = b""
        self._seq = 0  # frames published so far: a page knows which it has seen
        self._published = asyncio.Event()
        self._pages = 0
        self._asked = -float("inf")  # when the state was last read (monotonic)
        self._wake = asyncio.Event()  # someone looks: the watch starts again
        self._last_take = time.monotonic()  # spans on the monotonic clock: a clock step is no rate
        self._audit_at = -float("inf")
        self._audit_version = -1
        self._audit_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._audit_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        offset = phase()  # the samples fall on the worker's ticks (gateway.ticks)
        due = on_tick(loop.time() + DASHBOARD_SAMPLE_S, DASHBOARD_SAMPLE_S, offset=offset)
        seen = self._fingerprint()
        while True:
            if self.watched():
                await asyncio.sleep(DASHBOARD_WATCH_S)
            else:  # nobody looks: the next sample, unless someone comes first
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - loop.time())):
                        await self._wake.wait()
            try:
                if loop.time() >= due:
                    # Never a burst of catch-up samples after a stall: the next one is a
                    # second from now.
                    due = on_tick(
                        max(due + DASHBOARD_SAMPLE_S, loop.time() + DASHBOARD_WATCH_S),
                        DASHBOARD_SAMPLE_S,
                        offset=offset,
                    )
                    self.sample()
                    seen = self._fingerprint()
                elif (now := self._fingerprint()) != seen:
                    seen = now
                    self._refresh_state(event="state")
                    self._maybe_refresh_audit()  # a new version: its audit now, not at a sample
            except Exception:  # a bug here must not end the dashboard for good
                log.exception("dashboard sample failed")

    def watched(self) -> bool:
        """Whether changes between samples matter to anyone: a page is open, or the state
        was read lately (``geogate ctl top`` reads it every second)."""
        return self._pages > 0 or time.monotonic() - self._asked < DASHBOARD_IDLE_AFTER_S

    def look(self) -> dict[str, Any]:
        """The state, for a reader: built now if nobody was watching (it could be a
        sample old), and the watch woken for the next DASHBOARD_IDLE_AFTER_S."""
        if not self.watched():
            self._refresh_state(event="state")
            self._wake.set()
        self._maybe_refresh_audit()  # a version the audit read has not seen: read at once
        self._asked = time.monotonic()
        return self.state

    # --- sampling --------------------------------------------------------------------------
    def _fingerprint(self) -> tuple[object, ...]:
        """What a change of would turn something red or green on the page."""
        store = self.rt.store
        now = time.monotonic()
        views = tuple(
            (v.id, v.healthy, v.drained, v.weight, v.bias_ms, store.health(v.id).ejected(now))
            for v in store.snapshot(now).upstreams
        )
        # refused, synced_once: the banner's words (state.shared_state), at once as stale's.
        shared = store.stale_since, store.synced_once, store.refused
        return views, store.version, shared, store.fleet_down, self.rt.draining

    def sample(self) -> None:
        """Take the counts and append a point; while someone looks, build the state and
        publish it. While nobody does, only the point's figures are read (state.point_rows):
        the state is built at the next look instead."""
        taken = time.monotonic()
        span = max(taken - self._last_take, 1e-3)
        tick = Tick(time.time(), span, self.rt.traffic.take())  # at: the chart's wall time
        self._last_take = taken
        self.window.add(tick)
        if self.watched():
            self._refresh_state(tick=tick)
        else:
            self.history.append(point(state.point_rows(self.rt, time.monotonic()), tick))
        self._maybe_refresh_audit()  # kept current either way: a look shows it at once

    def _refresh_state(self, tick: Tick | None = None, event: str = "tick") -> None:
        self.state = state.build(self.rt, self.window, time.monotonic())
        self.state["audit"] = self.audit
        self.state["audit_error"] = self.audit_error
        data: dict[str, Any] = {"state": self.state}
        if tick is not None:
            p = point(self.state, tick)
            self.history.append(p)
            data["point"] = p
        if self._pages:  # encoded once for all pages, and only when someone looks
            self._publish(sse(event, data))

    def _publish(self, frame: bytes) -> None:
        self._frame = frame
        self._seq += 1
        published, self._published = self._published, asyncio.Event()
        published.set()

    # --- the audit trail -------------------------------------------------------------------
    def _maybe_refresh_audit(self) -> None:
        store = self.rt.store
        due = time.monotonic() - self._audit_at >= DASHBOARD_AUDIT_REFRESH_S
        if (due or store.version != self._audit_version) and (
            self._audit_task is None or self._audit_task.done()
        ):
            self._audit_at = time.monotonic()
            self._audit_version = store.version
            self._audit_task = asyncio.get_running_loop().create_task(self._read_audit())

    async def _read_audit(self) -> None:
        try:
            self.audit = await self.rt.store.audit(AUDIT_SHOWN)
            self.audit_error = None
        except (RedisError, OSError) as exc:
            self.audit_error = f"audit unavailable: shared state unreachable ({type(exc).__name__})"
            self._audit_version = -1  # try again at the next sample
            return
        except AuditUnwritable as exc:  # Redis answered: its key is no stream (a hand edit)
            self.audit_error = f"audit unavailable: {exc}"
            self._audit_version = -1
            return
        if self.watched():  # else the next look builds the state, with this
            self._refresh_state(event="state")

    # --- pages -----------------------------------------------------------------------------
    def hello(self) -> bytes:
        return sse("hello", {"state": self.state, "history": list(self.history)})

    async def frames(
        self, until: float | None = None, ended: Callable[[], bool] | None = None
    ) -> AsyncIterator[bytes]:
        """What one page receives: the history and state first, then each new frame, until
        ``until`` (unix time: its session's end; the page then finds itself logged out), or
        until ``ended`` says its session was logged out of (a copied cookie's stream too)."""
        self.look()
        self._pages += 1
        try:
            seen = self._seq
            yield f"retry: {RETRY_MS}\n\n".encode() + self.hello()
            while (until is None or time.time() < until) and not (ended and ended()):
                # The newest frame, at once if one came out while the page was busy sending
                # the last: frames in between are skipped, never queued.
                while self._seq == seen:
                    await self._published.wait()
                seen = self._seq
                yield self._frame
        finally:
            self._pages -= 1
