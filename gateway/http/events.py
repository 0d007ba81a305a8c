"""An SSE stream sent on whole events: the bytes after the last complete event wait for the
rest of it.

Why: when an upstream fails mid-stream, an SSE client gets a last ``data: {"error": ...}``
event (gateway.http.upstream's ``_abort``). Sent after half an event, it was glued to it: the
client's parser read one broken ``data:`` line, and the OpenAI SDKs raised a JSON decode error
instead of the APIError the event is for. A reset drops whatever the upstream's socket still
held unread, so a cut lands mid-event as often as not. So the relay sends up to the last blank
line it has, and a cut drops the partial event instead of sending it.

As a rule an upstream's write is one event and a read ends on its blank line: it goes out
whole, untouched (``take``'s first test). ``HOLD_MAX_BYTES`` bounds what waits: past it all
goes, so an upstream whose events never end with a blank line still streams. gateway/_splice.c
holds back the same way (its ``HOLD_MAX``, ``event_end``) and takes over what is held here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from gateway.errors import GatewayError, StreamInterrupted
from gateway.http.errors import error_body

SSE_TYPE: Final = "text/event-stream"
HOLD_MAX_BYTES: Final = 64 * 1024  # as gateway/_splice.c's HOLD_MAX
# An event ends at a blank line: LF LF, CRLF CRLF (its last three bytes), CR CR, and LF CR
# (CRLF CR too: WHATWG's event stream ends a line at CRLF, LF or CR, so a CR after a line's
# end is an empty line; an LF after that CR is the same line end, whenever it comes).
_ENDS: Final = (b"\n\n", b"\n\r\n", b"\r\r", b"\n\r")


def framed(header: Callable[[bytes], str | None]) -> bool:
    """An upstream's response the gateway sends on whole events, and ends with an error event
    at a cut: an event stream with no Content-Length (no room for one more event) and no
    Content-Encoding (its bytes are not the events: a plain event in a gzip body corrupts it).
    The others are reset at a cut."""
    if not (header(b"content-type") or "").startswith(SSE_TYPE):
        return False
    coding = header(b"content-encoding")
    return header(b"content-length") is None and (
        coding is None or coding.strip().lower() == "identity"
    )


def error_event(message: str, kind: type[GatewayError] = StreamInterrupted) -> bytes:
    """The stream's last event after a cut (the SDKs' APIError): ``upstream_stream_interrupted``,
    or ``gateway_shutting_down`` for the drain's."""
    return b"data: " + json.dumps(error_body(kind(message))).encode() + b"\n\n"


def event_end(data: bytes) -> int:
    """Where the last complete event of ``data`` ends (after its blank line); 0: none does."""
    return max((at + len(end) for end in _ENDS if (at := data.rfind(end)) >= 0), default=0)


class EventFramer:
    """One stream's held bytes: ``take`` each piece, send what it returns; at the body's end
    send ``held`` as it is (the splice takes it over, and empties it, where it goes on).

    ``open``: what was sent so far ends inside an event, which only an event over
    ``HOLD_MAX_BYTES`` does. An error event after it would be glued to it, so a cut then is a
    reset (``ends_cleanly``)."""

    __slots__ = ("held", "open")

    def __init__(self) -> None:
        self.held = b""
        self.open = False

    def take(self, data: bytes) -> bytes:
        """What of ``data`` (after what is held) may go now: up to the last event's end."""
        if not self.held and data.endswith(_ENDS):
            self.open = False
            return data
        data = self.held + data
        if len(data) > HOLD_MAX_BYTES:
            self.held = b""
            self.open = not data.endswith(_ENDS)
            return data
        end = event_end(data)
        self.held = data[end:]
        if end:
            self.open = False
        return data[:end]


def ends_cleanly(framer: EventFramer | None) -> bool:
    """An error event can end this stream: it is an event stream, not cut inside an event."""
    return framer is not None and not framer.open
