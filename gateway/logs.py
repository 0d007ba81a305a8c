"""What the gateway's log lines look like (``[log] format``), and the fields events carry.

  "text"  events as readable lines ("2025-01-01 12:00:00,000 WARNING geogate.health: ..."),
          the access log as one JSON object per line (``gateway.http.exchange``)
  "ecs"   both as ECS JSON, one object per line, by Elastic's own ``ecs-logging`` formatter:
          what Filebeat or Elastic Agent ship to Elasticsearch without a parsing pipeline

Events pass their fields as ``extra=event(...)``: ``event.action`` and the like in ECS, where
the text format ignores them (its line says the same in words). Fields ECS has no name for go
under ``geogate.*``, as ECS asks of custom fields. Every value is written by ``json.dumps``
with ASCII escapes, so nothing a client sends (a request id, a path) can end a line or add a
field: it stays a string value of a field we named.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any

import ecs_logging
import msgspec

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_DATASET = "geogate.access"
EVENTS_DATASET = "geogate.events"
# Left out of ECS lines: log.original repeats message; log.origin (file, line, function) and
# the thread (one asyncio thread per worker) say nothing an operator searches for.
REPEAT_KIND = "geogate_repeat_kind"  # a record's attribute: repeating()'s kind, not a field
ECS_EXCLUDE = ("log.original", "log.origin", "process.thread", "process.name", REPEAT_KIND)
ECS_SERVICE = {"service.name": "geogate"}


def formatters(fmt: str) -> tuple[logging.Formatter, logging.Formatter]:
    """(events, access) formatters for ``log.format``."""
    if fmt == "ecs":
        ecs = ecs_logging.StdlibFormatter(exclude_fields=ECS_EXCLUDE, extra=ECS_SERVICE)
        return ecs, ecs
    # The access message is already a JSON object: a log pipeline reads the line as it is.
    return logging.Formatter(TEXT_FORMAT), MessageOnly("%(message)s")


class MessageOnly(logging.Formatter):
    """Writes the message as it is: what lets ``direct_sink`` skip the log record."""


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: lines are written in batches, of ``max_lines`` or whatever
    ``flush()`` finds (the app flushes at the first of the worker's ticks at least
    ACCESS_LOG_FLUSH_S after a batch's first line, and at shutdown; logging
    flushes every handler at exit), not one write and flush per request as StreamHandler does
    (nginx's ``access_log ... buffer= flush=``). A line is still formatted when it is logged,
    so it says what happened then."""

    def __init__(self, max_lines: int) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.max_lines = max_lines
        self._fd: int | bool | None = False  # _pipe_fd's answer; False: not looked up yet
        # Called when a line starts a new batch: what wakes the app's flush task, which then
        # sleeps for nothing while nobody is served (gateway.http.app.flush_access_log).
        self.on_batch: list[Callable[[], object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # as StreamHandler: a bad record must not break the request
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """A line as it is to be written (``direct_sink``)."""
        with self.lock:  # type: ignore[union-attr]  # logging's atexit flush is another thread
            self.lines.append(line)
            if len(self.lines) == 1:
                for wake in self.on_batch:
                    wake()
            if len(self.lines) >= self.max_lines:
                self.flush()  # the lock is re-entrant

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            if self.lines:
                lines, self.lines = self.lines, []
                fd = self._pipe_fd()
                if fd is None:
                    self.stream.write("\n".join(lines) + "\n")
                else:
                    self.stream.flush()  # what other handlers wrote to it goes first
                    for piece in pieces(lines, select.PIPE_BUF):
                        view = memoryview(piece)
                        while view:  # a line over PIPE_BUF may go in parts: all of it goes
                            view = view[os.write(fd, view) :]
            super().flush()

    def _pipe_fd(self) -> int | None:
        """The stream's descriptor when it is a pipe or a Unix socket (a log shipper's, a
        container runtime's, journald's): there the workers of one gateway share it, and a
        write of at most PIPE_BUF bytes is never interleaved with another's. A batch went in
        one write, and two workers' lines came out spliced mid-line. None for a file
        (O_APPEND writes are whole), a TCP socket (no write is whole there; ship logs through
        a pipe or a Unix socket) or a stream with no descriptor."""
        if self._fd is False:
            try:
                fd = self.stream.fileno()
                kind = os.fstat(fd).st_mode
                self._fd = fd if stat.S_ISFIFO(kind) or _unix_socket(fd, kind) else None
            except (AttributeError, OSError, ValueError):
                self._fd = None
        return self._fd

    def setStream(self, stream: Any) -> Any:  # logging's name
        self._fd = False  # looked up again for the new stream
        return super().setStream(stream)


def _unix_socket(fd: int, mode: int) -> bool:
    if not stat.S_ISSOCK(mode):
        return False
    with socket.socket(fileno=os.dup(fd)) as sock:  # a copy: closing it leaves ``fd`` open
        return sock.family == socket.AF_UNIX


def pieces(lines: list[str], limit: int) -> list[bytes]:
    """``lines`` as newline-ended bytes, joined into pieces of at most ``limit`` bytes that end
    at a line's end; a line longer than ``limit`` is a piece of its own (it cannot be whole
    in one pipe write, but no other line is cut)."""
    out: list[bytes] = []
    piece = bytearray()
    for line in lines:
        data = line.encode("utf-8", "backslashreplace") + b"\n"
        if piece and len(piece) + len(data) > limit:
            out.append(bytes(piece))
            piece.clear()
        piece += data
    if piece:
        out.append(bytes(piece))
    return out


def repeating(kind: str, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """The ``extra`` of a line that can come once per request (a malformed request, a cut
    stream): RepeatLimit holds back those of ``kind`` past its limit. Lines of state changes
    (an upstream's health, an ejection, an operator's change) are not marked: each is one."""
    return {**(extra or {}), REPEAT_KIND: kind}


class RepeatLimit(logging.Filter):
    """At most ``burst`` lines of each kind that ``repeating`` marks in each ``window_s``: the
    last let through says so, and the first after a window that dropped some says how many,
    from when. Unmarked lines, and ERROR and up, always pass; ``burst`` 0: no limit. A client
    can make a line per request (a malformed head, a refused connection) and an outage one
    per failed request: at thousands a second they buried the lines an operator looks for and
    filled the disk, where journald or a log shipper would have dropped lines of its own
    choosing, unsaid. Per worker."""

    def __init__(
        self, burst: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        # (logger, kind) -> its window: kinds are the few constants the calls name
        self._kinds: dict[tuple[str, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # Read, not taken: another handler's limit sees it too (ECS_EXCLUDE keeps it out of
        # the line).
        kind = getattr(record, REPEAT_KIND, None)
        if kind is None or record.levelno >= logging.ERROR or self.burst <= 0:
            return True
        now = self.clock()
        key = (record.name, str(kind))
        seen = self._kinds.get(key)
        if seen is None or now - seen.start >= self.window_s:  # a new window for this kind
            if seen is not None and seen.lines > self.burst:
                began = time.strftime("%H:%M:%S", time.gmtime(seen.wall))
                _say(
                    record,
                    f"{seen.lines - self.burst} more like it were not logged in the "
                    f"{self.window_s:g} s from {began} UTC",
                )
            seen = self._kinds[key] = _Window(now, time.time())
        seen.lines += 1
        if seen.lines == self.burst:  # the last one let through says what follows
            _say(
                record,
                f"{self.burst} like it in {self.window_s:g} s: more are counted, not logged, "
                "until that time is up",
            )
        return seen.lines <= self.burst


class _Window:
    """One kind's window: its start on the filter's clock and on the wall's, its lines."""

    __slots__ = ("lines", "start", "wall")

    def __init__(self, start: float, wall: float) -> None:
        self.start, self.wall, self.lines = start, wall, 0


def _say(record: logging.LogRecord, note: str) -> None:
    """``note`` added to ``record``'s message, in brackets; a message whose arguments do not
    format is left as it is, for logging to report as it would without this filter (an
    exception here would reach the code that logged)."""
    try:
        text = record.getMessage()
    except Exception:  # logging's own "--- Logging error ---" says it, at the emit
        return
    record.msg, record.args = f"{text} [{note}]", None


def direct_sink(logger: logging.Logger) -> BatchingStreamHandler | None:
    """The handler to give a finished line to, skipping logging's record, when that writes
    the very same line: ``logger`` writes at INFO through exactly one BatchingStreamHandler
    that writes the message as it is (``MessageOnly``), with no filter on either. A record
    looks up its caller's frame, the pid (a system call) and the thread's name; with this,
    msgspec and the cached second an access line went from 16 µs to 5 (bench/hotpath.py,
    ``--tree`` on commit 02f72c8, then this tree). Anything else configured (another handler,
    a filter, ECS): None, and the line goes through logging as usual."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or not logger.isEnabledFor(logging.INFO):
        return None
    h = handlers[0]
    if (
        isinstance(h, BatchingStreamHandler)
        and isinstance(h.formatter, MessageOnly)
        and not h.filters
        and h.level <= logging.INFO
    ):
        return h
    return None


def json_line(doc: Mapping[str, object]) -> str:
    """``doc`` as one line of JSON, ASCII only: msgspec (a few times faster than json.dumps),
    and json.dumps's escapes when a value has anything beyond ASCII (a client-sent model name
    or path), so that no character a log tool might take for a line break goes out raw."""
    try:
        line: str = msgspec.json.encode(doc).decode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in a client's JSON) has no UTF-8:
        return json.dumps(doc, separators=(",", ":"))  # which writes it as the escape it came as
    return line if line.isascii() else json.dumps(doc, separators=(",", ":"))


_second: list[tuple[int, str]] = [(-1, "")]  # the last second utc_ms formatted, and its text


def utc_ms(now: float) -> str:
    """``now`` (time.time()) as ISO 8601 UTC to the millisecond, "2026-11-26T05:15:23.676+00:00",
    as datetime.isoformat writes it; the text up to the second is formatted once a second."""
    sec = int(now)
    us = round((now - sec) * 1e6)  # datetime rounds to the microsecond, then cuts to the ms
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    cached, text = _second[0]
    if sec != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second[0] = (sec, text)
    return f"{text}.{us // 1000:03d}+00:00"


def event(
    action: str,
    *,
    reason: str | None = None,
    user: str | None = None,
    change: bool = False,
    **custom: object,
) -> dict[str, object]:
    """The ``extra`` of an event's log call. ``action``: what happened ("upstream-ejected");
    ``reason``: why; ``user``: the operator who did it; ``change``: a configuration change
    (ECS category "configuration", type "change"); ``custom``: geogate.<name> fields."""
    extra: dict[str, object] = {
        "event.kind": "event",
        "event.action": action,
        "event.dataset": EVENTS_DATASET,
    }
    if change:
        extra["event.category"] = ["configuration"]
        extra["event.type"] = ["change"]
    if reason is not None:
        extra["event.reason"] = reason
    if user is not None:
        extra["user.name"] = user
    for name, value in custom.items():
        extra[f"geogate.{name}"] = value
    return extra
