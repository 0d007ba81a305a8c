"""HTTP/1.x framing refused on every engine: the checks themselves, and through a real gateway
on granian and on hypercorn, whose parsers let through what gateway.h1 refuses (a request
smuggled behind another, a transfer coding dechunked and the connection kept)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gateway.errors import RequestInvalid, TransferCodingUnsupported
from gateway.http.framing import framing_error, lax_framing_error
from tests.support import eventually, start_fleet

H = [(b"host", b"gw")]


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (b"gw", True),
        (b"example.com:443", True),
        (b"127.0.0.1:8080", True),
        (b"[::1]:8080", True),
        (b"[2001:db8::1]", True),
        (b"gw:65535", True),
        (b"gw:65536", False),  # no port past 65535
        (b"gw:99999", False),
        (b"gw:0", True),  # RFC 3986: port = *DIGIT
        (b"gw:", True),
        (b"gw:080", True),
        (b"[fe80::1%25eth0]:80", True),  # a zone (RFC 6874)
        (b"Example.COM.", True),
        (b"", True),
        (b"gw:000065536", False),
        (b"a:b", False),  # a port is digits
        (b"a:1:2", False),
        (b"user:pw@gw", False),
        (b"gw/x", False),
        (b"g w", False),
    ],
)
def test_a_host_is_a_name_or_address_and_a_port(host: bytes, ok: bool) -> None:
    assert (framing_error("1.1", [(b"host", host)]) is None) is ok


def test_what_llhttp_lets_through_is_refused() -> None:
    assert isinstance(framing_error("1.1", []), RequestInvalid)  # no Host
    assert isinstance(framing_error("1.1", H + H), RequestInvalid)  # two
    assert framing_error("1.0", []) is None  # HTTP/1.0 may leave it out
    te = [*H, (b"transfer-encoding", b"gzip, chunked")]
    assert isinstance(framing_error("1.1", te), TransferCodingUnsupported)
    assert isinstance(
        framing_error("1.0", [*H, (b"transfer-encoding", b"chunked")]), RequestInvalid
    )
    assert framing_error("1.1", [*H, (b"transfer-encoding", b" Chunked ")]) is None


@pytest.mark.parametrize(
    "extra",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5, 5")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"+5")],
        [(b"content-length", b"")],
    ],
)
def test_what_other_parsers_let_through_is_refused_too(extra: list[tuple[bytes, bytes]]) -> None:
    assert framing_error("1.1", [*H, *extra]) is None  # llhttp refuses these itself
    assert isinstance(lax_framing_error("1.1", [*H, *extra]), RequestInvalid)


def test_sound_framing_passes() -> None:
    assert lax_framing_error("1.1", [*H, (b"content-length", b"13")]) is None
    assert lax_framing_error("1.1", [*H, (b"transfer-encoding", b"chunked")]) is None


# A POST framed by its chunks, with a GET hidden in what its Content-Length still covers.
SMUGGLED = b"GET /v1/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
CHUNKS = b"0\r\n\r\n" + SMUGGLED
CL_TE = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%b" % (len(CHUNKS), CHUNKS)
)
# A coding the gateway does not take, dechunked by granian, with a request after it.
TE_GZIP = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"\r\n0\r\n\r\n" + SMUGGLED
)


def _answers(port: int, request: bytes) -> bytes:
    """Everything the gateway sends back until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("engine", ["hypercorn", "granian"])
def test_a_request_cannot_be_smuggled_behind_another(tmp_path: Path, engine: str) -> None:
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"')
    try:
        for request, status in ((CL_TE, b"400"), (TE_GZIP, b"501")):
            data = _answers(gw.port, request)
            assert data.startswith(b"HTTP/1.1 " + status), data[:300]
            assert data.count(b"HTTP/1.1 ") == 1, data  # one answer: the hidden GET never ran
            assert b"smuggled" not in data and b"connection: close" in data.lower()
        # answered by the app (hypercorn's h11 answers the coding's 501 itself): counted, logged
        eventually(lambda: '"status":400' in gw.log_text(), what="its access line")
        assert sim.stats()["requests"] == 0
    finally:
        gw.stop()
        sim.proc.kill()


# A chunk size that is not hexadecimal: gateway.h1 refuses it in its parser (a JSON 400);
# granian says "http.disconnect" to the app and, with no answer from it, sent a plain 500.
BAD_CHUNK = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("engine", ["uvicorn", "granian", "hypercorn"])
def test_malformed_chunks_get_a_json_400(tmp_path: Path, engine: str) -> None:
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"')
    try:
        head, _, body = _answers(gw.port, BAD_CHUNK).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        assert sim.stats()["requests"] == 0
        if engine == "hypercorn":  # h11 answers it itself, with no body: the app never sees it
            assert b"server: hypercorn" in head.lower() and body == b"", (head, body)
            return
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_request" and "chunk" in error["message"], error
        eventually(lambda: '"status":400' in gw.log_text(), what="its access line")
    finally:
        gw.stop()
        sim.proc.kill()
