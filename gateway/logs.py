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

import logging

import ecs_logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_DATASET = "geogate.access"
EVENTS_DATASET = "geogate.events"
# Left out of ECS lines: log.original repeats message; log.origin (file, line, function) and
# the thread (one asyncio thread per worker) say nothing an operator searches for.
ECS_EXCLUDE = ("log.original", "log.origin", "process.thread", "process.name")
ECS_SERVICE = {"service.name": "geogate"}


def formatters(fmt: str) -> tuple[logging.Formatter, logging.Formatter]:
    """(events, access) formatters for ``log.format``."""
    if fmt == "ecs":
        ecs = ecs_logging.StdlibFormatter(exclude_fields=ECS_EXCLUDE, extra=ECS_SERVICE)
        return ecs, ecs
    # The access message is already a JSON object: a log pipeline reads the line as it is.
    return logging.Formatter(TEXT_FORMAT), logging.Formatter("%(message)s")


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: lines are written in batches, of ``max_lines`` or whatever
    ``flush()`` finds (the app flushes every ACCESS_LOG_FLUSH_S, and at shutdown; logging
    flushes every handler at exit), not one write and flush per request as StreamHandler does
    (nginx's ``access_log ... buffer= flush=``). A line is still formatted when it is logged,
    so it says what happened then."""

    def __init__(self, max_lines: int) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.max_lines = max_lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # as StreamHandler: a bad record must not break the request
            self.handleError(record)
            return
        if len(self.lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            if self.lines:
                lines, self.lines = self.lines, []
                self.stream.write("\n".join(lines) + "\n")
            super().flush()


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
