"""One proxied request, start to end: everything the steps learn about it lives here, so that
each step takes one object instead of a dozen arguments, and the access log reads it at the
end instead of being used to carry data between steps."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.http.asgi import Message, Scope, Send
from gateway.logs import ACCESS_DATASET, direct_sink, json_line, utc_ms
from gateway.routing.model import Decision
from gateway.runtime import Routed, access_log


@dataclass(slots=True)
class Exchange:
    id: str  # the request id (the client's X-Request-Id when valid)
    scope: Scope
    started: float  # time.perf_counter() when the request arrived
    body: bytes = b""
    # The client sent the body compressed (Content-Encoding): it goes on decoded, the header
    # dropped (gateway.http.headers), as most model servers read no compressed body.
    decoded: bool = False
    model: str = ""
    stream: bool = False  # the client asked for a stream ("stream": true): timeouts follow it
    hops: int = 0  # the gateways it came through before this one (geogate-hops)
    routed: Routed | None = None  # client, location, decision
    attempts: int = 0  # upstream attempts made
    # The decision's candidate tried last (its order's index): after one drained since the
    # routing is passed by, not the same as ``attempts`` - 1.
    index: int = -1
    upstream: str = "-"  # the upstream that answered
    # The last one tried when none answered (a 502/503/504 after attempts): the access line
    # names it, as nginx's $upstream_addr does; ``upstream`` stays "-" (nothing was served).
    tried: str | None = None
    # Its region (after failover, not the first choice), set with ``upstream`` where it
    # answered: a search of the decision's order for it cost the access line four calls.
    served_region: str | None = None
    status: int = 0  # what the client got (499: it left first)
    response_started: bool = False  # a byte went out: no failover, no error response
    first_byte_s: float | None = None  # when the response started (seconds after arrival)
    body_bytes: int = 0  # response body bytes sent to the client
    # The client of a request answered before it was routed (Proxy._record): then ``routed``
    # does not say, and the access line still names who sent it.
    client: str | None = None
    # What cut the response after bytes reached the client (geogate_stream_aborted's cause);
    # None when it ended whole. An SSE stream's status stays its head's 200: this says it broke.
    aborted: str | None = None

    @property
    def decision(self) -> Decision:
        assert self.routed is not None, "routed before any upstream attempt"
        return self.routed.decision

    @property
    def region(self) -> str:
        """The serving region, the metrics label: the answering upstream's (after a failover,
        not the first choice); where none answered, the chosen one (its clients' first
        choice, whose failure it is); "-" before routing or when none was chosen."""
        if self.served_region is not None:
            return self.served_region
        chosen = self.routed.decision.chosen if self.routed else None
        return chosen.upstream.region if chosen else "-"

    def _region_or_none(self) -> str | None:
        """The access line's region: ``region`` (the serving one, else the chosen one, as the
        metrics label it), None before routing or when none was chosen."""
        region = self.region
        return None if region == "-" else region

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def response_starts(self) -> None:
        """Called as the response's head goes out (before: a send that fails may have sent
        it): from now on no failover and no error answer, and the time to first byte."""
        self.response_started = True
        self.first_byte_s = time.perf_counter() - self.started

    def tracking(self, send: Send) -> Send:
        """``send``, keeping this record (head, body bytes) of what goes through it: for the
        answers the proxy builds itself; the served path keeps it where it sends."""

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.body_bytes += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                self.status = message["status"]  # as sent (the gateway's own model list's)
                self.response_starts()
            await send(message)

        return tracked

    def log(self, fmt: str) -> None:
        """The access log line, in ``log.format``: built only when the logger would write it.

        "text": one JSON object per line; every field is escaped by json.dumps (ASCII only),
        so no path, request id or header a client sends can end the line or fake a field.
        "ecs": the same facts as ECS fields (``gateway.logs``), escaped the same way."""
        # The sink, when there is one, is only there while the logger writes INFO: then that is
        # not asked twice.
        sink = direct_sink(access_log) if fmt != "ecs" else None
        if sink is None and not access_log.isEnabledFor(logging.INFO):
            return
        if fmt == "ecs":
            scope = self.scope
            access_log.info(
                "%s %s %d", scope["method"], scope["path"], self.status, extra=self.ecs_fields()
            )
            return
        r = self.routed
        line = json_line(
            {
                "ts": utc_ms(time.time()),
                "rid": self.id,
                "method": (method := self.scope["method"]),
                "path": self.scope["path"],
                "status": self.status,
                # Inline, not logged_text(): a Python call per request on the served path.
                "model": model
                if len(model := self.model) <= LOGGED_TEXT_MAX
                else logged_text(model),
                # Where none answered, the chosen one, as the metrics label it.
                "region": self._region_or_none(),
                "upstream": self.tried or self.upstream,
                "attempts": self.attempts,
                "ttfb_ms": _ms(self.first_byte_s),
                "ms": _ms(self.elapsed_s()),
                "bytes": self.body_bytes if method != "HEAD" else 0,  # as nginx's: sent
                "client": r.client_text if r else self.client,
                "country": r.location.country if r else None,
                "aborted": self.aborted,
            }
        )
        if sink is not None:
            sink.add(line)
        else:
            access_log.info(line)

    def ecs_fields(self) -> dict[str, object]:
        """This exchange in ECS field names (ECS has none for the model, region, upstream,
        attempts or time to first byte: those are geogate.*)."""
        r, scope = self.routed, self.scope
        fields: dict[str, object] = {
            "event.kind": "event",
            "event.category": ["web"],
            "event.type": ["access"],
            "event.dataset": ACCESS_DATASET,
            # A response cut mid-way failed, whatever status its head said.
            "event.outcome": (
                "success" if 0 < self.status < 400 and self.aborted is None else "failure"
            ),
            "event.duration": int(self.elapsed_s() * 1e9),  # ECS: nanoseconds
            "http.request.id": self.id,
            "http.request.method": scope["method"],
            "http.version": scope.get("http_version", "1.1"),
            "url.path": scope["path"],
            "http.response.status_code": self.status,
            # A HEAD's body is counted where it is made and dropped by the server: none sent
            "http.response.body.bytes": self.body_bytes if scope["method"] != "HEAD" else 0,
            # None: left out of the line (a request refused before it was routed)
            "geogate.model": (
                model if len(model := self.model) <= LOGGED_TEXT_MAX else logged_text(model)
            )
            or None,
            "geogate.region": self._region_or_none(),
            "geogate.upstream": self.tried or (None if self.upstream == "-" else self.upstream),
            "geogate.attempts": self.attempts,
            "geogate.ttfb_ms": _ms(self.first_byte_s),
            "geogate.aborted": self.aborted,  # None: left out
        }
        client = r.client_text if r is not None else self.client
        if client is not None:
            fields["client.ip"] = client
        if r is not None and r.location.country:
            fields["client.geo.country_iso_code"] = r.location.country
        return fields


LOGGED_TEXT_MAX = 200  # characters of a client's string (the model) kept in a line or message


def logged_text(text: str) -> str:
    """A client's string cut to LOGGED_TEXT_MAX: a 4 MiB body may name a 4 MiB model, which
    would otherwise become a 4 MB access line and error message."""
    return text if len(text) <= LOGGED_TEXT_MAX else text[:LOGGED_TEXT_MAX] + "..."


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
