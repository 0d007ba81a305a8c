"""The uvicorn engine's HTTP/1.1 protocol (gateway.h1.conn), through a real gateway: caps on a
request's head (past the size, a JSON 431 and the connection closed, before the head is held
whole; under it, the app's own check answers; past server.head_timeout_s with the head
unfinished, a JSON 408), JSON 400 and 503, keep-alive, pipelining."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import re
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from gateway import defaults as d
from gateway.errors import BodyTooLarge
from gateway.h1 import capped, for_ops
from tests.support import (
    Gateway,
    Sim,
    access_line,
    eventually,
    read_to_eof,
    start_fleet,
    until,
)

LIMIT = d.MAX_HEADER_BYTES + d.MAX_URL_BYTES  # the default config's cap


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gw, sim = start_fleet(tmp_path)
    yield gw
    gw.stop()
    sim.proc.kill()


def _send_head(port: int, header_bytes: int) -> tuple[bytes, int]:
    """A GET with ``header_bytes`` of extra headers, sent until the server stops reading;
    what it answered, and how many header bytes went out."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            while sent < header_bytes:
                line = b"X-Pad-%d: %s\r\n" % (sent, b"a" * 60_000)
                s.sendall(line)
                sent += len(line)
            s.sendall(b"\r\n")
        except OSError:  # the server closed after its answer: the rest is not read
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, sent


def _json_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_a_head_past_the_cap_is_refused_with_431_and_not_read_to_the_end(gw: Gateway) -> None:
    # 64 MB: more than loopback's socket buffers take in, so the close stops the sender
    answer, sent = _send_head(gw.port, 64 * 2**20)
    status, err = _json_error(answer)
    assert status == 431 and err["code"] == "request_headers_too_large", answer[:300]
    parts = f"(server.max_header_bytes {d.MAX_HEADER_BYTES} + {d.MAX_URL_BYTES} for the URL)"
    assert f"limit of {LIMIT} bytes {parts}" in str(err["message"])  # the log's cap, and its parts
    assert b"connection: close" in answer.lower()
    assert sent < 64 * 2**20  # the connection closed long before the client was done
    assert f"refused a request head over {LIMIT} bytes {parts}" in gw.log_text()
    assert httpx.get(f"{gw.url}/healthz").status_code == 200  # the worker serves on


def test_a_url_past_the_cap_gets_a_431_that_names_the_url_too(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /healthz?q=" + b"a" * (LIMIT + 1000) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_to_eof(s)
    status, err = _json_error(answer)
    assert status == 431 and "request line and headers" in str(err["message"]), answer[:300]
    assert "shorter URL" in str(err["message"])


def test_a_head_under_the_cap_but_over_max_header_bytes_gets_the_apps_431(gw: Gateway) -> None:
    big = {f"x-pad-{i}": "a" * 1000 for i in range(d.MAX_HEADER_BYTES // 1000 + 2)}
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=big, json={"model": "m"})
    assert r.status_code == 431
    assert "server.max_header_bytes" in r.json()["error"]["message"]


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Gateway]:
    """server.head_timeout_s = 1."""
    gw, sim = start_fleet(tmp_path, server_extra="head_timeout_s = 1")
    yield gw
    gw.stop()
    sim.proc.kill()


@pytest.mark.parametrize(
    ("sent", "trickle"),
    # Bytes that keep the head valid however many come: a longer path, a longer header name.
    [(b"GET /", b"a"), (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-", b"a")],
)
def test_a_head_not_complete_in_head_timeout_s_gets_408(
    quick: Gateway, sent: bytes, trickle: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        # A trickle, a byte every 0.25 s for up to 6 s: a clock that a byte reset would never
        # run out while it lasts, so the 408 has to come while it still trickles.
        for _ in range(24):
            time.sleep(0.25)
            try:
                s.sendall(trickle)
            except OSError:  # answered and closed: the 408 is waiting to be read
                break
        answer = read_to_eof(s)
        took = time.monotonic() - t0
    status, err = _json_error(answer)
    assert status == 408 and err["code"] == "request_timeout", answer[:200]
    assert "server.head_timeout_s" in str(err["message"])
    # head_timeout_s = 1 from the first byte, not from the last (which would be 7 s); the
    # rest of the bound is room for a loaded machine.
    assert 0.5 < took < 5


def test_a_kept_alive_connection_idle_between_requests_is_not_a_slow_head(quick: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", quick.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            assert r.status == 200
            r.read()
            time.sleep(1.5)  # over head_timeout_s, under the keep-alive's 75 s
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_one_endless_header_is_refused_too(gw: Gateway) -> None:
    """httptools keeps a header's bytes until the next header starts: one that never ends is
    counted as it is read, not when the parser hands it over."""
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            while sent < 64 * 2**20:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        answer = read_to_eof(s)
    status, err = _json_error(answer)
    assert status == 431 and err["code"] == "request_headers_too_large", answer[:300]
    assert sent < 64 * 2**20


def test_a_connection_that_sends_nothing_is_not_answered(quick: Gateway) -> None:
    """Before its first byte a connection is idle, as between requests: no 408 at
    head_timeout_s (a pool may open one ahead of its first request)."""
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as s:
        time.sleep(1.5)  # past head_timeout_s = 1
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(100)  # nothing sent, and the connection still open
        s.settimeout(5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_a_malformed_request_gets_a_json_400(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_to_eof(s)
    status, err = _json_error(answer)
    assert status == 400 and err["code"] == "invalid_request", answer[:300]
    assert "malformed HTTP/1.1 request" in str(err["message"])


@pytest.mark.parametrize(
    ("head", "status", "code", "says"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "invalid_request", "this one has 0"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "invalid_request", "has 2"),
        (b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "invalid_request", "has 2"),
        (b"GET /healthz HTTP/1.1\r\nHost: u@a/b\r\n\r\n", 400, "invalid_request", "not a host"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "unsupported_transfer_coding",
            "chunked alone",
        ),
    ],
    ids=["no-host", "two-hosts", "two-hosts-1.0", "not-a-host", "gzip-chunked"],
)
def test_hosts_and_transfer_codings_rfc_9112_refuses(
    gw: Gateway, head: bytes, status: int, code: str, says: str
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        answer = read_to_eof(s)
    got, err = _json_error(answer)
    assert (got, err["code"]) == (status, code), answer[:300]
    assert says in str(err["message"])


def test_good_requests_pipelined_before_a_bad_one_are_answered_first(gw: Gateway) -> None:
    # The bad head closed the connection: neither GET was answered (nginx: 200, 200, 400).
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(get + get + b"BAD REQUEST\r\n\r\n")
        answer = read_to_eof(s)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)  # a body ends with no line break
    assert statuses == [b"200", b"200", b"400"], answer[-400:]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x \r\n\r\n", b"200"),  # whitespace after a value
        (b"GET /healthz HTTP/1.1\r\nHost: x\t\r\n\r\n", b"200"),
        (b"GET http://x HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),  # absolute form, empty path
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # only HTTP/1.0 may leave out Host
        (
            b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
    ],
    ids=["space-after-host", "tab-after-host", "absolute-empty-path", "1.1-no-host", "1.0-te"],
)
def test_valid_forms_are_served_and_faulty_framing_refused(
    gw: Gateway, head: bytes, status: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        answer = read_to_eof(s) if status == b"400" else s.recv(65536)  # a 400 closes
    assert answer.split(b" ", 2)[1] == status, answer[:300]


def test_an_absolute_form_targets_host_is_the_one_the_ops_listener_judges(gw: Gateway) -> None:
    """RFC 9112 3.2.2: the server takes an absolute-form target's authority, not Host. The
    ops listener's DNS-rebinding check judged the Host sent, whatever the target named."""
    port = gw.ops_port

    def status(target: bytes, host: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, host))
            return read_to_eof(s).split(b" ", 2)[1]

    assert status(b"/routing-table", b"evil.example") == b"421"  # origin-form: Host decides
    assert status(b"http://127.0.0.1:%d/routing-table" % port, b"evil.example") == b"200"
    assert status(b"http://[::1]/routing-table", b"evil.example") == b"200"
    assert status(b"http://evil.example/routing-table", b"127.0.0.1") == b"421"
    assert status(b"http://evil@127.0.0.1/routing-table", b"127.0.0.1") == b"400"  # userinfo


@pytest.mark.parametrize(("version", "continues"), [(b"1.1", True), (b"1.0", False)])
def test_expect_100_with_trailing_space_and_never_to_http_1_0(
    gw: Gateway, version: bytes, continues: bool
) -> None:
    # "100-continue " (a space after it) got no 100, and the client waited; an HTTP/1.0
    # client got one, which RFC 9110 15.2 forbids. The body is sent only once the request is
    # in flight: the proxy then waits for it in receive(), where a 100 is written, so a 100
    # due is in the answer before the final status, and one not due is nowhere in it.
    head = (
        b"POST /v1/chat/completions HTTP/%b\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nExpect: 100-continue \r\n\r\n" % version
    )
    in_flight = "geogate_requests_in_flight 1.0"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        eventually(lambda: in_flight in httpx.get(f"{gw.ops_url}/metrics").text, what="in flight")
        s.sendall(b"{}")
        answer = read_to_eof(s) if version == b"1.0" else s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 100 Continue") is continues, answer[:200]
    assert (b"100 Continue" in answer) is continues


@pytest.mark.parametrize(
    ("line", "status", "code", "logged"),
    [
        (b"CONNECT 127.0.0.1:443 HTTP/1.1", 501, "method_not_supported", "a CONNECT request"),
        (b"GET /v1/models HTTP/2.0", 505, "http_version_not_supported", "an HTTP/2.0 request"),
        (b"POST /v1/chat/completions HTTP/0.9", 505, "http_version_not_supported", "an HTTP/0.9"),
    ],
    ids=["connect", "http-2.0-line", "http-0.9-line"],
)
def test_a_method_or_version_the_gateway_does_not_take_is_a_json_error_that_says_so(
    gw: Gateway, line: bytes, status: int, code: str, logged: str
) -> None:
    # CONNECT got a 400 saying "User callback error" (the target no URL parser splits); a
    # request line naming HTTP/2.0 or HTTP/0.9 was served as HTTP/1.1.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(line + b"\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        got, err = _json_error(read_to_eof(s))
    assert (got, err["code"]) == (status, code), err
    said = str(err["message"])
    assert said.startswith("CONNECT is not supported" if status == 501 else "HTTP/"), said
    eventually(lambda: f"refused {logged}" in gw.log_text(), what=logged)


def test_an_expectation_the_gateway_met_does_not_reach_the_upstream(gw: Gateway) -> None:
    # The sim-backend (aiohttp, as Ollama's Go server) answers an expectation it does not know
    # with 417: passed on, "Expect: foo" came back as the upstream's error.
    for expect in ("foo", "100-continue, foo"):
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            headers={"Expect": expect},
            json={"model": "m", "messages": [], "max_tokens": 2},
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text


@pytest.mark.parametrize(
    ("second", "status"),
    [
        (b"Host: u@a/b\r\n", b"400"),
        (b"Host: x\r\nHost: y\r\n", b"400"),
        (b"Host: x\r\nTransfer-Encoding: gzip, chunked\r\n", b"501"),
    ],
    ids=["new-bad-host", "two-hosts", "transfer-coding"],
)
def test_a_keep_alive_connection_checks_what_changed_since_its_last_checked_request(
    gw: Gateway, second: bytes, status: bytes
) -> None:
    # The framing check is skipped for a request like the connection's last checked one
    # (same Host, no transfer coding): one that differs is checked.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the same: skipped, served
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\n" + second + b"\r\n")
        answer = read_to_eof(s)
    assert answer.split(b" ", 2)[1] == status, answer[:300]


def test_an_http_1_0_request_may_come_without_a_host(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = read_to_eof(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_an_http_1_0_client_keeps_its_connection_when_it_asks(gw: Gateway) -> None:
    # As nginx: "Connection: keep-alive" from an HTTP/1.0 client (ab -k) is answered with it,
    # and the connection serves the next request; without it the answer ends the connection.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"\r\nconnection: keep-alive\r\n" in head.lower(), head
            assert b"content-length: " in head.lower(), head
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = read_to_eof(s)  # the close: read_to_eof returns
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()


CHUNKED_POST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\n"
    b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "after-a-good-chunk"])
def test_a_malformed_chunked_body_gets_the_apps_json_400(gw: Gateway, split: bool) -> None:
    """Bad chunk framing in the running request's own body: the app answers it as any 400,
    with its access line, not a close with no answer logged as the client leaving (499)."""
    rid = b"bad-chunks-%d" % split
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        if split:  # a good chunk the app has read first, the bad size line, then more
            s.sendall(CHUNKED_POST % rid + b'2\r\n{"\r\n')
            time.sleep(0.2)
            s.sendall(b"zz\r\n}\r\n")
            time.sleep(0.1)
            s.sendall(b"more bytes after the bad ones\r\n0\r\n\r\n")
        else:
            s.sendall(CHUNKED_POST % rid + b"zz\r\n{}\r\n0\r\n\r\n")
        answer = read_to_eof(s)  # to the end: the connection closes after the answer
    status, err = _json_error(answer)
    assert status == 400 and err["code"] == "invalid_request", answer[:300]
    assert "malformed HTTP/1.1 request" in str(err["message"])
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and b"x-request-id: " + rid in head
    line = access_line(gw, rid.decode())
    assert line["status"] == 400, line
    log = gw.log_text()
    assert "the app raised" not in log
    assert log.count("refused a malformed HTTP/1.1 request") == 1, log[-2000:]  # parsed once
    assert httpx.get(f"{gw.url}/healthz").status_code == 200  # the worker serves on
    # The app answered it, with its access line: not a refusal of the protocol's own.
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    assert 'geogate_protocol_refused_total{code="400"} 0.0' in metrics, metrics


def test_a_refused_head_is_one_log_line_the_gateways(gw: Gateway) -> None:
    """One line per refused head, the gateway's, with the client (uvicorn's protocol logged
    "Invalid HTTP request received." before it: one event, two lines)."""
    _send_head(gw.port, 64 * 2**20)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        read_to_eof(s)
    log = gw.log_text()
    assert log.count(f"refused a request head over {LIMIT} bytes") == 1, log[-2000:]
    assert log.count("refused a malformed HTTP/1.1 request from 127.0.0.1:") == 1, log[-2000:]
    assert "Invalid HTTP request received." not in log
    # No access line for what never reached the app: counted instead, by status.
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    assert 'geogate_protocol_refused_total{code="431"} 1.0' in metrics, metrics
    assert 'geogate_protocol_refused_total{code="400"} 1.0' in metrics


@pytest.fixture
def two_connections(tmp_path: Path) -> Iterator[Gateway]:
    """server.max_connections = 2 (and max_streams 1: the connection limit is never below it):
    two open connections are served, a third's request is refused."""
    gw, sim = start_fleet(tmp_path, server_extra="max_streams = 1\nmax_connections = 2")
    yield gw
    gw.stop()
    sim.proc.kill()


def test_a_request_past_the_connection_limit_gets_a_json_503(two_connections: Gateway) -> None:
    gw = two_connections
    # Two connections, the limit, each with a request's head on its way: busy, so not closed
    # to make room (gateway.h1.reclaim), they hold the limit.
    busy = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    try:
        for conn in busy:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # Read or not yet, they are not closed for room: too young, or bytes unread in them.
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_to_eof(s)  # read to the end: the gateway closes this connection
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            body = json.dumps({"model": "m", "messages": []}).encode()
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: over-the-limit\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            proxied = read_to_eof(s)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-request-id: models-over\r\n\r\n")
            listed = read_to_eof(s)
    finally:
        for conn in busy:
            conn.close()
    status, err = _json_error(answer)
    assert status == 503, answer[:300]
    assert err["type"] == "service_unavailable" and err["code"] == "gateway_at_capacity"
    assert "connection limit of 2 open connections was reached" in str(err["message"])
    assert "server.max_connections" in str(err["message"])
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/json" in head and b"connection: close" in head
    assert f"retry-after: {d.CONNECTION_LIMIT_RETRY_AFTER_S}".encode() in head
    # A /v1 request over the limit: the same answer, with its access line and counted.
    assert _json_error(proxied)[0] == 503, proxied[:300]
    assert b"x-request-id: over-the-limit" in proxied.partition(b"\r\n\r\n")[0].lower()
    assert _json_error(listed)[0] == 503, listed[:300]  # the model list's: logged, counted
    # With the busy connections gone, there is room again.
    eventually(lambda: httpx.get(f"{gw.url}/healthz").status_code == 200, what="a 200 again")
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    assert 'geogate_overload_rejected_total{limit="max_connections"} 3.0' in metrics, metrics
    assert re.search(r'^geogate_requests_total\{code="503",region="-"\} 2\.0$', metrics, re.M)
    eventually(
        lambda: '"over-the-limit"' in gw.log_text() and '"models-over"' in gw.log_text(),
        what="the refused requests' access lines",
    )


def test_idle_connections_make_room_past_the_connection_limit(two_connections: Gateway) -> None:
    """Sockets that send nothing, and connections kept alive between requests, do not hold
    the limit: one client's 10,700 silent sockets answered every other client's request 503
    (a security review). The oldest idle ones close as new ones come; busy ones stay."""
    gw = two_connections
    kept = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    kept.request("GET", "/healthz")
    assert kept.getresponse().status == 200  # kept alive: idle, the oldest
    silent = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(10)]
    try:
        # Closed for room once idle that long, on clocks that start at the gateway's accept:
        # later than our connects on a loaded machine, so a new client is asked for until
        # served. One too early is refused as any request over the limit is (a 503, counted).
        time.sleep(d.RECLAIM_MIN_IDLE_S)  # the silent ones' clocks: none of them older
        refused: list[int] = []

        def served() -> bool:
            status = httpx.get(f"{gw.url}/healthz").status_code
            if status != 200:
                refused.append(status)
            return status == 200

        eventually(served, timeout=10.0, what="a new client served")
        assert set(refused) <= {503}, refused
        assert kept.sock is not None
        for s in [kept.sock, *silent[:8]]:  # closed for the ones after them: their end
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        kept.close()
        for s in silent:
            s.close()
    eventually(
        lambda: "closed" in gw.log_text() and "idle connection(s) to make room" in gw.log_text(),
        what="the reclaim's warning",
    )
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    rejected = f'geogate_overload_rejected_total{{limit="max_connections"}} {len(refused)}.0'
    assert rejected in metrics, metrics


def test_bytes_that_begin_no_request_do_not_keep_a_connection_from_being_reclaimed(
    two_connections: Gateway,
) -> None:
    # A CRLF every 0.3 s kept its connection "just active" and first among the idle ones,
    # which stopped every reclaim behind it: the silent sockets held the limit again.
    gw = two_connections
    crlf = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    silent = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(3)]
    try:
        for _ in range(6):  # the silent ones idle long enough meanwhile
            crlf.sendall(b"\r\n")
            time.sleep(d.RECLAIM_MIN_IDLE_S / 2)
        crlf.sendall(b"\r\n")  # and one just now
        time.sleep(0.02)
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        crlf.settimeout(5)
        assert crlf.recv(1) == b""  # the oldest idle one, whatever it sent: closed for room
    finally:
        for s in [crlf, *silent]:
            s.close()


def test_a_burst_past_the_connection_limit_gets_answers_not_silence(
    two_connections: Gateway,
) -> None:
    # Accepted in one loop turn, each connection looked idle to the next one's arrival (its
    # request not read yet) and was closed for room: 297 of 300 got no answer at all.
    gw = two_connections
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(40)]
    try:
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [read_to_eof(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    statuses = [a.split(b" ", 2)[1] if a.startswith(b"HTTP/1.1 ") else a[:20] for a in answers]
    # An answer for each: a 200, or the limit's 503. Which ones are served is the burst's
    # timing: a request read while 40 connections are open is past the limit of 2, so every
    # one can be a 503 (about 1 run in 6 here, on the code before this round as well).
    assert len(statuses) == 40 and set(statuses) <= {b"200", b"503"}, statuses


def test_pipelined_requests_get_whole_answers_in_order(gw: Gateway) -> None:
    """Each answer's head waits for its body (gateway.h1.cycle), per request of a pipelined batch:
    a streamed completion between two small answers keeps its place and its framing."""
    chat = json.dumps({"model": "m", "stream": True, "max_tokens": 3, "messages": []}).encode()
    batch = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(chat), chat)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(batch)
        answer = read_to_eof(s)
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"200", b"200"], answer[:400]
    assert b"text/event-stream" in parts[1] and parts[1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert parts[2].lower().count(b"connection: close") == 1


@pytest.fixture(params=[False, True], ids=["python-relay", "splice"])
def paced(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Gateway, Sim, bool]]:
    spliced = bool(request.param)
    extra = f"splice = {str(spliced).lower()}"
    gw, sim = start_fleet(tmp_path, "--tokens-per-s", "20", server_extra=extra)
    yield gw, sim, spliced
    gw.stop()
    sim.proc.kill()


def test_a_bad_request_pipelined_behind_a_stream_never_lands_inside_its_body(
    paced: tuple[Gateway, Sim, bool],
) -> None:
    """No 400 inside the streamed body, on either relay: the body ends whole, then the 400,
    then the close, as nginx answers (RFC 9112 9.3.2: in order). The Python relay closed the
    connection at the bad head, cutting the stream running before it."""
    gw, sim, _ = paced
    chat = {"model": "m", "stream": True, "max_tokens": 10, "messages": []}
    body = json.dumps(chat).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")  # pipelined behind the running stream
        got += read_to_eof(s)  # to the close
    stream, _, after = got.partition(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert after.startswith(b"HTTP/1.1 400 "), got[-300:]  # after the body's last chunk
    assert stream.count(b"HTTP/1.1 ") == 1 and after.endswith(b"}}")  # the 400's own JSON
    assert sim.stats()["cancelled"] == 0  # the stream ran to its end


# --- the protocol alone, on uvicorn's own config and server state --------------------------


async def _slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers its path and the body it got, after the ``?s`` seconds its query names."""
    if scope["type"] != "http":
        return
    got = b""
    while True:
        message = await receive()
        got += message.get("body", b"")
        if not message.get("more_body"):
            break
    await asyncio.sleep(float(scope["query_string"] or 0))
    body = scope["path"].encode() + b":" + got
    length = (b"content-length", b"%d" % len(body))
    await send({"type": "http.response.start", "status": 200, "headers": [length]})
    await send({"type": "http.response.body", "body": body})


def _on_protocol(
    case: Callable[[int, ServerState], Awaitable[None]],
    keepalive_s: float,
    head_timeout_s: float = 5.0,
    app: Callable[..., Awaitable[None]] = _slow_app,
    max_body_bytes: int = d.MAX_BODY_BYTES,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(app, timeout_keep_alive=keepalive_s, log_config=None)  # type: ignore[arg-type]
        config.load()
        state = ServerState()
        protocol = capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, head_timeout_s, max_body_bytes)
        server = await loop.create_server(lambda: protocol(config, state, {}, loop), "127.0.0.1", 0)
        try:
            await case(server.sockets[0].getsockname()[1], state)
        finally:
            server.close()

    uvloop.run(main())


async def _exchange(port: int, request: bytes) -> tuple[bytes, float]:
    """``request`` sent, what came back until the server closed, and when it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(request)
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return got, time.monotonic() - t0


def test_an_idle_connection_closes_after_the_keep_alive_time_a_busy_one_does_not() -> None:
    async def case(port: int, state: ServerState) -> None:
        got, took = await _exchange(port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.endswith(b"/one:") and 0.4 < took < 3  # answered, then idle 0.5 s: closed
        # An answer that takes longer than the keep-alive time is not cut.
        got, took = await _exchange(port, b"GET /slow?0.8 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.endswith(b"/slow:") and took > 1.2
        assert state.total_requests == 2 and not state.connections

    _on_protocol(case, keepalive_s=0.5)


def test_a_closing_connection_gets_a_keep_alive_time_to_drain_its_last_answer() -> None:
    """A Connection: close answer bigger than the socket buffers waits in the transport: the
    idle timer that fires soon after the close must not cut it (it reset the connection)."""
    size = 8 * 2**20

    async def case(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.7)  # the connection's idle timer fires at 1 s, after the close
        head = b"POST /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % size + b"x" * size)
        await until(lambda: not state.connections or state.total_requests == 1)
        await asyncio.sleep(0.8)  # a client slow to start reading, past the timer
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert got.endswith(b"/big:" + b"x" * size), len(got)

    _on_protocol(case, keepalive_s=1.0)


async def _cut_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Starts an answer of no stated length, sends part of it, then fails (an upstream cut)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the upstream went away")


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_response_cut_mid_way_never_reads_as_whole(version: str) -> None:
    """HTTP/1.1 gets chunks without their last one; HTTP/1.0 has no length and no chunks, so
    a plain close would read as the body's end: its connection is reset instead."""

    async def case(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /cut HTTP/%b\r\nHost: x\r\n\r\n" % version.encode())
        got = b""
        reset = False
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                got += chunk
        except ConnectionResetError:
            reset = True
        writer.close()
        assert got.startswith(b"HTTP/1.1 200") and b"partial" in got, got
        if version == "1.0":
            assert reset, got  # not a clean end of a close-delimited body
        else:
            assert b"transfer-encoding: chunked" in got and not got.endswith(b"0\r\n\r\n")

    _on_protocol(case, keepalive_s=5, app=_cut_app)


class _Said(Exception):
    logged = True  # as gateway.http.upstream.StreamAborted: the app logged why itself


@pytest.mark.parametrize("said", [False, True], ids=["a-bug", "a-cut-the-app-logged"])
def test_a_cut_the_app_logged_itself_is_no_error_with_a_traceback(
    said: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise _Said("cut") if said else RuntimeError("a bug")

    async def case(port: int, state: ServerState) -> None:
        got, _ = await _exchange(port, b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"partial" in got and not got.endswith(b"0\r\n\r\n")  # cut either way

    with caplog.at_level(logging.INFO):
        _on_protocol(case, keepalive_s=5, app=app)
    raised = [r for r in caplog.records if "the app raised" in r.getMessage()]
    assert len(raised) == (0 if said else 1), caplog.text


def test_a_head_held_back_behind_a_pipelined_response_is_not_timed_out() -> None:
    """Reading pauses while a response is still going out: the next head waits on this side,
    not the client's, and the head timeout does not cut the running response."""

    async def case(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /a?1.5 HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHo"  # C's head unfinished while A runs past head_timeout_s
        )
        await asyncio.sleep(1.8)
        writer.write(b"st: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert got.count(b"HTTP/1.1 200 OK") == 3, got
        assert got.index(b"/a:") < got.index(b"/b:") < got.index(b"/c:")

    _on_protocol(case, keepalive_s=5, head_timeout_s=1.0)


def test_a_graceful_stop_closes_idle_connections_and_lets_a_busy_one_finish() -> None:
    async def case(port: int, state: ServerState) -> None:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy = asyncio.ensure_future(_exchange(port, b"GET /busy?0.5 HTTP/1.1\r\nHost: x\r\n\r\n"))
        # Both connections open, and the busy one's request running in the app.
        await until(lambda: len(state.connections) == 2 and len(state.tasks) == 1)
        for conn in list(state.connections):
            conn.shutdown()  # what uvicorn's Server does at SIGTERM
        assert await asyncio.wait_for(idle_r.read(), 2) == b""  # closed, unanswered
        got, _ = await busy
        assert got.endswith(b"/busy:") and b"connection: close" in got
        idle_w.close()

    _on_protocol(case, keepalive_s=5)


class _Recorded(set[object]):
    """uvicorn's set of open connections, keeping a weak reference to each that joined."""

    def __init__(self) -> None:
        super().__init__()
        self.joined: list[weakref.ref[object]] = []

    def add(self, conn: object) -> None:
        self.joined.append(weakref.ref(conn))
        super().add(conn)


def test_a_closed_connection_is_freed_without_the_cyclic_collector() -> None:
    """The parser and the extensions hold bound methods of the protocol: cut at the close, so
    a connection's parser, last request and any unread body go at once, not at a full
    collection (long-lived connections reach the oldest generation)."""

    async def case(port: int, state: ServerState) -> None:
        state.connections = _Recorded()  # type: ignore[assignment]
        request = b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                got, _ = await _exchange(port, request)
                assert got.endswith(b"/y:")
            await until(lambda: not state.connections, what="every connection closed")
            joined = state.connections.joined  # type: ignore[attr-defined]
            assert len(joined) == 5 and not state.connections
            assert [r() for r in joined] == [None] * 5
        finally:
            gc.enable()

    _on_protocol(case, keepalive_s=5)


async def _counting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 and its body's size, or 413 where the protocol refused the body."""
    if scope["type"] != "http":
        return
    size, status = 0, 200
    try:
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    except BodyTooLarge:
        status = 413
    body = b"%d" % size
    length = (b"content-length", b"%d" % len(body))
    await send({"type": "http.response.start", "status": status, "headers": [length]})
    await send({"type": "http.response.body", "body": body})


def test_a_bodys_framing_counts_per_request_not_per_connection() -> None:
    """raw_body_limit (2 x 1 KiB + a head's 32 KiB here) holds one request's bytes as read:
    an endless chunk extension is refused, and keep-alive requests whose framing adds up past
    it across the connection are each served (the count starts again at each request)."""
    limit = capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, 5.0, 1024).raw_body_limit
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    small = head + b"1;" + b"e" * 3000 + b"\r\nx\r\n0\r\n\r\n"  # 3 KB of framing, 1 byte

    async def case(port: int, state: ServerState) -> None:
        got, _ = await _exchange(port, head + b"1;a=" + b"b" * (limit + 1) + b"\r\n")
        assert got.startswith(b"HTTP/1.1 413 "), got[:200]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(small * 20 + head + b"0\r\n\r\n")
        answers = b""
        while answers.count(b"HTTP/1.1 200 ") < 21:
            answers += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert answers.count(b"HTTP/1.1 200 ") == 21 and b"413" not in answers
        assert len(small) * 20 > limit  # more than one request's bound on one connection

    _on_protocol(case, keepalive_s=5, app=_counting_app, max_body_bytes=1024)


def test_the_ops_listener_bounds_a_body_as_read_by_its_own_limit() -> None:
    # The admin API's 64 KiB, not the public API's 4 MiB, which for_ops() took by default
    assert for_ops().raw_body_limit == (
        d.CHUNKED_OVERHEAD_MAX * d.ADMIN_MAX_BODY_BYTES + d.MAX_HEADER_BYTES
    )
