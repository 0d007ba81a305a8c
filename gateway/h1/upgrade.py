"""A request that offers a protocol switch (Upgrade: h2c, websocket): declined by answering
in HTTP/1.1, as RFC 9110 §7.8 allows, with its body read. llhttp stops at such a request's head
and hands the rest of the connection over; gateway.h1.conn reads the body by its
Content-Length (fed here), and a new parser takes what follows. The JDK's HTTP client offers
h2c on every plain-http request, bodies included."""

from __future__ import annotations

from gateway.h1.cycle import Cycle
from gateway.h1.refuse import malformed


def declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """An upgrade offer's Content-Length (0 without one). A chunked body is not read: Refused
    (llhttp stops at the head, before the chunks)."""
    length = 0
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            raise malformed(
                "a request offering a protocol upgrade must send its body with Content-Length"
            )
    return length


def feed_body(cycle: Cycle | None, left: int, data: bytes) -> tuple[int, bytes, bool]:
    """Up to ``left`` bytes of ``data`` to ``cycle`` as body (its end, once all are in): the
    bytes still owed, what follows the body, and whether reading should pause."""
    take, rest = data[:left], data[left:]
    pause = bool(take) and cycle is not None and not cycle.response_complete and cycle.feed(take)
    left -= len(take)
    if not left and cycle is not None and cycle.more_body:
        cycle.more_body = False
        cycle.wake()
    return left, rest, pause
