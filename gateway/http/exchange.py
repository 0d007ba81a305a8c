"""One proxied request, start to end: everything the steps learn about it lives here, so that
each step takes one object instead of a dozen arguments, and the access log reads it at the
end instead of being used to carry data between steps."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.http.asgi import Scope
from gateway.routing.model import Decision
from gateway.runtime import Routed, access_log


@dataclass(slots=True)
class Exchange:
    id: str  # the request id (the client's X-Request-Id when valid)
    scope: Scope
    started: float  # time.perf_counter() when the request arrived
    body: bytes = b""
    model: str = ""
    stream: bool = False  # the client asked for a stream ("stream": true): timeouts follow it
    routed: Routed | None = None  # client, location, decision
    attempts: int = 0  # upstream attempts made
    upstream: str = "-"  # the upstream that answered
    status: int = 0  # what the client got (499: it left first)
    response_started: bool = False  # a byte went out: no failover, no error response

    @property
    def decision(self) -> Decision:
        assert self.routed is not None, "routed before any upstream attempt"
        return self.routed.decision

    @property
    def region(self) -> str:
        """The chosen region (the metrics label); "-" before routing or when none."""
        chosen = self.routed.decision.chosen if self.routed else None
        return chosen.upstream.region if chosen else "-"

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def log(self) -> None:
        """One JSON object per line: every field is escaped by json.dumps (ASCII only), so no
        path, request id or header a client sends can end the line or fake a field."""
        r = self.routed
        access_log.info(
            json.dumps(
                {
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "rid": self.id,
                    "method": self.scope["method"],
                    "path": self.scope["path"],
                    "status": self.status,
                    "upstream": self.upstream,
                    "attempts": self.attempts,
                    "ms": round(self.elapsed_s() * 1000, 1),
                    "client": str(r.client) if r and r.client else None,
                    "country": r.location.country if r else None,
                }
            )
        )
