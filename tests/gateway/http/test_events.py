"""An SSE stream sent on whole events: the framer on its own, then a real gateway in front of
a backend that dies in the middle of an event, on the splice and on the Python relay: the
client's last event is the error event, whole, never glued to half of another."""

from __future__ import annotations

import http.server
import json
import socket
import struct
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
