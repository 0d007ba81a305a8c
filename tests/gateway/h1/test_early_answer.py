"""An answer sent before its request's body was all in (gateway.h1.cycle: Cycle._linger),
through a real gateway: the 408 for a body that trickles past server.body_timeout_s and the 413
for a declared Content-Length over server.max_body_bytes arrive whole, then the connection
ends (a FIN after the answer, the close LINGER_S later) however the client goes on sending;
a request whose body came whole keeps its connection."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from gateway import defaults as d
from tests.support import CHAT_BODY, Gateway, start_fleet

CHAT = json.dumps(CHAT_BODY)
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw, sim = start_fleet(tmp_path_factory.mktemp("early"), server_extra="body_timeout_s = 1")
    yield gw
    gw.stop()
    sim.proc.kill()


def _answer_then_end(s: socket.socket, more: bytes, every_s: float) -> tuple[bytes, float, float]:
    """Sends ``more`` every ``every_s`` while reading: the answer read until the server's end
    of the stream, then sent on until a send fails (the server closed). The answer, and the
    seconds from the request's start to its end of the stream and to that failure."""
    t0 = time.monotonic()
    got, eof_at = b"", 0.0
    while time.monotonic() - t0 < 12:
        if not eof_at and select.select([s], [], [], every_s)[0]:
            chunk = s.recv(65536)
            got += chunk
            eof_at = 0.0 if chunk else time.monotonic() - t0
            continue
        if eof_at:
            time.sleep(every_s)
        try:
            s.sendall(more)
        except OSError:  # EPIPE or ECONNRESET: the server's socket is gone
            return got, eof_at, time.monotonic() - t0
    raise AssertionError(f"still open after 12 s (end of stream at {eof_at:.1f} s): {got!r}")


def _json_error(answer: bytes) -> tuple[int, bytes, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert len(body) == length, answer  # whole
    return int(head.split(b" ", 2)[1]), head.lower(), json.loads(body)["error"]


def test_a_trickling_body_gets_its_408_whole_then_the_connection_ends(gw: Gateway) -> None:
    """Without the end it would trickle on forever: each byte kept an idle timer at bay."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        got, eof_at, closed_at = _answer_then_end(s, b"1\r\n \r\n", 0.1)
    status, head, err = _json_error(got)
    assert status == 408 and err["code"] == "request_timeout", got
    assert b"connection: close" in head
    assert eof_at < 4  # the answer at body_timeout_s (1 s), its end of stream right after it
    # ...and the close LINGER_S later, the client sending all along
    assert eof_at + d.LINGER_S * 0.5 < closed_at < eof_at + d.LINGER_S + 3, (eof_at, closed_at)


def test_a_declared_body_over_the_limit_gets_its_413_whole_then_the_connection_ends(
    gw: Gateway,
) -> None:
    """The client sends the body it declared (10 MiB, over max_body_bytes) as fast as it can:
    unread at a plain close, those bytes would have the kernel reset the connection."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % (10 * 2**20) + b" " * 65536)
        got, eof_at, closed_at = _answer_then_end(s, b" " * 65536, 0.01)
    status, head, err = _json_error(got)
    assert status == 413 and err["code"] == "request_too_large", got
    assert b"connection: close" in head
    # The end of the stream seen (0.0: never), then the close LINGER_S later, not at once
    assert 0 < eof_at < 3 and eof_at + d.LINGER_S * 0.5 < closed_at < eof_at + d.LINGER_S + 3, (
        eof_at,
        closed_at,
    )


def test_a_request_with_its_whole_body_keeps_its_connection(gw: Gateway) -> None:
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    socks = []
    try:
        for _ in range(2):
            c.request("POST", "/v1/chat/completions", CHAT, {"Content-Type": "application/json"})
            socks.append(c.sock)
            r = c.getresponse()
            assert r.status == 200 and r.getheader("connection") != "close", r.read()
            r.read()
    finally:
        c.close()
    assert socks[0] is socks[1] is not None  # the same connection, not a reconnect
