"""Requests aiohttp cannot parse get OpenAI's JSON error shape and one log line, not aiohttp's
plain text and a traceback each: on the simulator, over raw sockets (the model server, which
installs the same protocol, in tests/backend/test_server.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.protocol import OpenAIErrors, install, one_line
from gateway.cli.procs import stop
from tests.support import Sim, read_to_eof, start_sim

MALFORMED = {
    "not http": b"GARBAGE\r\n\r\n",
    "content-length not a number": b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n"
    b"Content-Length: abc\r\n\r\n",
    "chunked beside content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "a header line over 8 KiB": b"GET /health HTTP/1.1\r\nHost: s\r\nX-Long: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "bad chunk size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, Path]]:
    tmp = tmp_path_factory.mktemp("protocol")
    s = start_sim(tmp, "p", "eu-central", ["m"])
    try:
        yield s, tmp / "sim-p.log"
    finally:
        stop(s.proc)


def _ask(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = read_to_eof(sock)  # the connection is closed after the error
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_a_json_400_and_one_log_line(
    sim: tuple[Sim, Path], case: str
) -> None:
    s, log = sim
    before = log.read_text()
    status, headers, body = _ask(s.port, MALFORMED[case])
    assert status.split()[1] == b"400", (status, body)
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "bad_request")
    assert error["message"] and "\n" not in error["message"]
    new = log.read_text()[len(before) :]
    assert "Traceback" not in new and "aiohttp.server" not in new, new
    # a first request that is no HTTP at all (a scanner, a TLS hello): at debug, as aiohttp's
    lines = 0 if case == "not http" else 1
    assert new.count("answered a request from 127.0.0.1 with HTTP 400: ") == lines, new


def test_a_good_request_after_them_is_served(sim: tuple[Sim, Path]) -> None:
    s, _ = sim
    status, _, body = _ask(s.port, b"GET /health HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
    assert status.split()[1] == b"200", body


def test_install_points_aiohttps_server_at_the_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's Server builds web_server.RequestHandler for each connection; a release that
    # renamed or moved it would leave install() a no-op, and this test says so
    from aiohttp import web_server

    monkeypatch.setattr(web_server, "RequestHandler", vars(web_server)["RequestHandler"])
    install()  # undone after the test: this process's other aiohttp servers keep aiohttp's
    assert vars(web_server)["RequestHandler"] is OpenAIErrors


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "Invalid method encountered:\n\n  b'GARBAGE'\n     ^",
            "Invalid method encountered: b'GARBAGE'",
        ),
        ("Got more than 8190 bytes when reading", "Got more than 8190 bytes when reading"),
        (None, ""),
    ],
)
def test_aiohttps_diagram_is_one_line(text: str | None, line: str) -> None:
    assert one_line(text) == line
