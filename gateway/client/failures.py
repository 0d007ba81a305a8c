"""What a request to an upstream can fail with: the client's own exceptions (one root,
ClientError), and the one mapping of them to failure kinds that the proxy's attempts, the
prober and the metrics share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.defaults import REFUSAL_MESSAGE_MAX


class ClientError(Exception):
    """The root of everything gateway.client raises, besides TimeoutError (the first-byte
    wait, ``timeout_s``, or an ``asyncio.timeout`` around a call) and CancelledError."""


class ConnectFailed(ClientError):
    """No connection: refused, unreachable, or the name did not resolve. Nothing was sent."""

    def __init__(self, origin: str, os_error: OSError) -> None:
        self.os_error = os_error
        self.reason = os_error.strerror or str(os_error)
        super().__init__(f"{origin}: {self.reason}")


class ConnectTimeout(ClientError, TimeoutError):
    """The connection was not made within the connect timeout. Nothing was sent. A
    TimeoutError too, as asyncio's own: callers that only know timeouts still see one."""


class ConnectionLost(ClientError):
    """The connection broke (reset, or closed before the response was complete)."""


class BadResponse(ClientError):
    """The upstream's bytes are not an HTTP/1.1 response, or a body read whole is too big."""


class FailureKind(StrEnum):
    REFUSED = "refused"  # no connection: nothing reached the upstream
    RESET = "reset"  # the connection broke
    TIMEOUT = "timeout"
    STATUS = "status"  # an answer with a status that says "not now" (429, 502, 503)


@dataclass(frozen=True, slots=True)
class Failure:
    upstream: str
    kind: FailureKind
    detail: str
    status: int | None = None
    retry_after: str | None = None
    # No connection was made (the attempt's Reach): a TIMEOUT then is no answer that was late,
    # and the proxy answers it as a refused connection (502), not a 504.
    connecting: bool = False

    @property
    def label(self) -> str:
        """The metric label: status_503 etc. for statuses, the kind otherwise."""
        return f"status_{self.status}" if self.kind is FailureKind.STATUS else str(self.kind)

    def describe(self) -> str:
        return f"{self.upstream} ({self.detail})"


def status_detail(status: int, body: bytes | None) -> str:
    """A refusal as the client's error lists it: "HTTP 429", and the upstream's own message
    where its body has one (OpenAI's ``error.message``, vLLM's older ``message``, FastAPI's
    ``detail``, else a plain text's first line). A quota's 429 ("insufficient_quota") said
    only "at capacity", and the client had nothing to act on. ``body``: None where it is not
    to be read (not all of it came with the head, compressed, over REFUSAL_BODY_MAX_BYTES:
    gateway.client.response's ``readable_body``, the one place that decides it)."""
    said = message_of(*read_error(body)) if body else None
    return f"HTTP {status}: {said}" if said else f"HTTP {status}"


def read_error(body: bytes) -> tuple[str, Any]:
    """An error answer's body as text (what does not decode replaced) and its JSON document,
    or None where it is none: read once, for ``message_of`` and whoever looks at both."""
    text = body.decode("utf-8", "replace").strip()
    try:
        return text, json.loads(text)
    except (ValueError, RecursionError):
        return text, None


def message_of(text: str, doc: Any) -> str | None:
    """An error answer's message, for a person: the first of ``status_detail``'s sources
    found, on one line of printable characters, at most REFUSAL_MESSAGE_MAX of them; None
    where it has none. ``text`` and ``doc``: the body as ``read_error`` read it."""
    if isinstance(doc, dict):
        error = doc.get("error")
        found = error.get("message") if isinstance(error, dict) else error
        found = found if isinstance(found, str) else doc.get("message", doc.get("detail"))
        text = found if isinstance(found, str) else _validation(found)
    elif doc is not None or text.startswith("<"):  # a JSON scalar, or an HTML page
        return None
    line = text.split("\n", 1)[0]
    # No control bytes into a log line, nor what did not decode (U+FFFD)
    said = "".join(c if c.isprintable() and c != "\ufffd" else " " for c in line).strip()
    if len(said) > REFUSAL_MESSAGE_MAX:
        said = said[:REFUSAL_MESSAGE_MAX] + "..."
    return said or None


def _validation(detail: Any) -> str:
    """FastAPI's 422: ``detail`` a list of ``{"loc": [...], "msg": ...}``, said as
    "body.messages: Field required; ..."."""
    if not isinstance(detail, list):
        return ""
    said = [
        f"{'.'.join(str(p) for p in e.get('loc', []))}: {e['msg']}".lstrip(": ")
        for e in detail
        if isinstance(e, dict) and isinstance(e.get("msg"), str)
    ]
    return "; ".join(said)


# What a request to an upstream can raise besides TimeoutError; classify() knows them all.
CLIENT_ERRORS = (ClientError, OSError)


def classify(exc: BaseException, timeout_detail: str) -> tuple[FailureKind, str]:
    """The kind and a one-line description of an exception from a request to an upstream."""
    if isinstance(exc, ConnectTimeout):  # a TimeoutError too: test it first
        return FailureKind.TIMEOUT, "connect timed out"
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT, timeout_detail
    if isinstance(exc, ConnectFailed):
        return FailureKind.REFUSED, f"connect failed: {exc.reason}"
    if isinstance(exc, BadResponse):
        return FailureKind.RESET, f"bad response: {exc}"
    if isinstance(exc, ConnectionLost):
        return FailureKind.RESET, f"connection lost: {exc}"
    return FailureKind.RESET, f"connection lost: {type(exc).__name__}"


class Reach:
    """Whether one request got as far as a connection to its upstream (pooled or new), after
    which the request is written at once. A timeout before that point reached nobody; a
    timeout after it may have left work running there (a generation is not idempotent). A
    pooled connection the upstream had closed (lost before any byte of an answer) unmarks it
    while ``Client.request`` connects again to send the request once more: it ran nowhere."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False
