"""An SSE stream sent on whole events: the framer on its own, then a real gateway in front of
a backend that dies in the middle of an event, on the splice and on the Python relay: the
client's last event is the error event, whole, never glued to half of another."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.http import events
from gateway.http.events import HOLD_MAX_BYTES, EventFramer, event_end
from tests.support import (
    UpstreamSpec,
    access_line,
    gateway_toml,
    serve_http,
    start_fleet,
    start_gateway,
)


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"data: a\n\n", 9),
        (b"data: a\n\ndata: b", 9),
        (b"data: a\r\n\r\ndata: b\r\n", 11),  # CRLF lines
        (b"data: a\r\rdata: b", 9),  # CR lines
        (b"data: a\r\n\r", 10),  # CRLF, then a CR: an empty line (its LF may come later)
        (b"data: a\n\r", 9),
        (b"data: a\n", 0),
        (b"", 0),
        (b"data: a\n\ndata: b\n\n", 18),
    ],
)
def test_an_event_ends_at_its_blank_line(data: bytes, end: int) -> None:
    assert event_end(data) == end


def test_a_partial_event_waits_for_its_rest() -> None:
    f = EventFramer()
    whole = b"data: 1\n\n"
    assert f.take(whole) is whole  # the usual read: out as it came, not copied
    assert f.take(b'data: {"a') == b""
    assert f.take(b'": 1}\n\ndata: {"b') == b'data: {"a": 1}\n\n'
    assert f.take(b"\n") == b""  # one line ending is no blank line
    assert f.take(b"\n") == b'data: {"b\n\n'
    assert f.take(b"data: tail") == b""
    assert f.held == b"data: tail"  # at the body's end: sent as it is


def test_what_never_ends_an_event_still_streams_past_the_bound() -> None:
    f = EventFramer()
    assert f.take(b"x" * HOLD_MAX_BYTES) == b""
    assert f.take(b"y") == b"x" * HOLD_MAX_BYTES + b"y"  # past the bound: all of it goes
    assert f.held == b""


def test_a_flush_past_the_bound_leaves_the_stream_inside_an_event() -> None:
    f = EventFramer()
    assert events.ends_cleanly(f) and not events.ends_cleanly(None)
    assert f.take(b"data: " + b"x" * HOLD_MAX_BYTES) != b""  # half of a long event went
    assert not events.ends_cleanly(f)  # an error event now would be glued to it
    assert f.take(b"x\n\n") == b"x\n\n"  # its end: whole events from here
    assert events.ends_cleanly(f)
    assert f.take(b"data: " + b"y" * HOLD_MAX_BYTES + b"\n\n")  # long but whole
    assert events.ends_cleanly(f)


@pytest.mark.parametrize(
    ("headers", "framed"),
    [
        ({"content-type": "text/event-stream"}, True),
        (
            {"content-type": "text/event-stream; charset=utf-8", "content-encoding": "identity"},
            True,
        ),
        ({"content-type": "text/event-stream", "content-length": "10"}, False),
        ({"content-type": "text/event-stream", "content-encoding": "gzip"}, False),
        ({"content-type": "text/event-stream", "content-encoding": " GZIP"}, False),
        ({"content-type": "application/json"}, False),
        ({}, False),
    ],
)
def test_only_a_plain_unbounded_event_stream_is_framed(
    headers: dict[str, str], framed: bool
) -> None:
    assert events.framed(lambda name: headers.get(name.decode())) is framed


def test_the_error_event_is_one_whole_event() -> None:
    event = events.error_event("cut")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["code"] == "upstream_stream_interrupted"


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "python-relay"])
def test_a_backend_dying_mid_event_gives_the_sdk_its_error_event(
    tmp_path: Path, splice: bool
) -> None:
    # Two tokens, then half of the third event, read by the gateway, then a reset.
    gw, sim = start_fleet(
        tmp_path,
        "--tokens-per-s",
        "50",
        "--abort-after",
        "2",
        "--abort-mid-event",
        server_extra=f"splice = {str(splice).lower()}",
    )
    try:
        body = {"model": "m", "stream": True, "max_tokens": 8, "messages": [{"role": "user"}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
        data = [line for line in r.text.split("\n") if line]
        # Every line the client got is a whole event's: the half one was dropped.
        docs = [json.loads(line.removeprefix("data: ")) for line in data]
        assert docs[-1]["error"]["code"] == "upstream_stream_interrupted", r.text
        assert (
            sum(bool(d.get("choices", [{}])[0].get("delta", {}).get("content")) for d in docs) == 2
        )
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                pass
        assert "in the middle of the response" in str(caught.value)
    finally:
        gw.stop()
        sim.proc.kill()


class _LengthFramed(http.server.BaseHTTPRequestHandler):
    """An event stream framed by a Content-Length it never reaches: a reset after 2 events."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # the probes' /health
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n' * 2)
        self.wfile.flush()
        linger = struct.pack("ii", 1, 0)  # closed with a reset, as a crashed server's is
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def length_framed() -> Iterator[str]:
    with serve_http(_LengthFramed) as url:
        yield url


def test_an_event_stream_with_a_length_cut_short_is_reset_not_a_500(
    tmp_path: Path, length_framed: str
) -> None:
    # Its head said 1000 bytes: no error event fits after a cut, so the client's stream is
    # reset as any cut body's is. It was a 500 logged with a traceback, from the error event
    # written past the length.
    ups = [UpstreamSpec("lf", "eu-central", length_framed, ["m"])]
    gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups))
    try:
        body = {"model": "m", "stream": True, "messages": [{"role": "user"}]}
        with (
            httpx.Client(timeout=10) as c,
            c.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200 and r.headers["content-length"] == "1000"
            rid = r.headers["x-request-id"]
            with pytest.raises(httpx.RemoteProtocolError):
                r.read()
        doc = access_line(gw, rid)
        assert (doc["status"], doc["aborted"]) == (502, "upstream_error"), doc
        log = gw.log_text()
        assert "unexpected error" not in log and "Traceback" not in log, log[-2000:]
        metrics = httpx.get(f"{gw.ops_url}/metrics").text
        assert 'geogate_requests_total{code="502"' in metrics
        assert 'geogate_requests_total{code="500"' not in metrics
    finally:
        gw.stop()


class _CutInside(http.server.BaseHTTPRequestHandler):
    """Two events, then (the request's "cut") "long": 150 KB of a 300 KB event, past the
    gateway's hold, or "gzip": a gzip-encoded event stream's first bytes; then a reset."""

    protocol_version = "HTTP/1.1"
    do_GET = _LengthFramed.do_GET

    def do_POST(self) -> None:
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        gzipped = asked["cut"] == "gzip"
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        event = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
        part = gzip.compress(event * 2)[:30] if gzipped else event * 2
        part += b"" if gzipped else b'data: {"x": "' + b"y" * 150_000
        for at in range(0, len(part), 8192):
            piece = part[at : at + 8192]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.01)
        linger = struct.pack("ii", 1, 0)  # closed with a reset, as a crashed server's is
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        return None


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "python-relay"])
@pytest.mark.parametrize("path", ["long", "gzip"])
def test_a_cut_inside_what_was_sent_is_a_reset_not_a_glued_error_event(
    tmp_path: Path, splice: bool, path: str
) -> None:
    # An event longer than the hold went out in part: an error event after it was glued to
    # it, and the SDK raised a JSON decode error. A gzip body got a plain event in it. Both
    # now end as a reset, as a body with a length does.
    with serve_http(_CutInside) as url:
        ups = [UpstreamSpec("cut", "eu-central", url, ["m"])]
        extra = f"[server]\nsplice = {str(splice).lower()}"
        gw = start_gateway(
            tmp_path, lambda port: gateway_toml(port, ups).replace("[server]", extra)
        )
        try:
            body = {"model": "m", "stream": True, "messages": [{"role": "user"}], "cut": path}
            with (
                httpx.Client(timeout=10) as c,
                c.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                got = b""
                with pytest.raises(httpx.RemoteProtocolError):
                    for piece in r.iter_raw():
                        got += piece
            assert b"upstream_stream_interrupted" not in got
            assert got.startswith(b"data: " if path == "long" else b"\x1f\x8b")
        finally:
            gw.stop()
