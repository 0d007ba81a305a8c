"""A stream's rest carried by gateway._splice: the C relay on real loopback TCP sockets, then
gateway.http.relay handing a stream to it in process, then a gateway whose metrics say which
path its streams took."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import http.client
import itertools
import json
import os
import select
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _splice
from gateway.client import BadResponse, Client, ConnectionLost
from gateway.http import splice
from gateway.http.asgi import PIPE
from gateway.http.events import EventFramer
from gateway.http.relay import relay
from gateway.http.watchdog import Watchdog
from gateway.traffic import carries_token
from tests.gateway.client.scripted import Scripted, run
from tests.support import read_to_eof, self_signed_cert, start_fleet, until

# --- the C relay alone, its protocol methods called as the upstream transport would -------


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, the first non-blocking (the gateway's)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        peer = socket.create_connection(srv.getsockname())
        ours, _ = srv.accept()
    ours.setblocking(False)
    peer.settimeout(5)
    return ours, peer


class Upstream:
    """The upstream transport's flow calls, counted."""

    def __init__(self) -> None:
        self.reading = True
        self.pauses = self.resumes = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1


class Pipe:
    """The client's side as gateway.h1's Pipe offers it to the relay: what the socket could
    not take is written here (kept, as a transport's buffer keeps it) until ``flush()``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held = bytearray()
        self.writes = 0
        self.closing = False
        self.flow = SimpleNamespace(write_paused=False)

    def write(self, data: bytes) -> None:
        self.held += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def buffered(self) -> int:
        return len(self.held)

    def flush(self) -> None:
        """What a transport does once its socket is writable: the held bytes go out."""
        self.sock.setblocking(True)
        self.sock.sendall(self.held)
        self.sock.setblocking(False)
        self.held.clear()


class Rig:
    """An upstream's counted flow calls, a client peer, the gateway's client socket and a
    Relay between them; ``feed(data)`` is the upstream transport's read: data_received."""

    def __init__(self, on_token: Any = None) -> None:
        self.cl, self.client = _tcp_pair()
        self.upstream = Upstream()
        self.pipe = Pipe(self.cl)
        self.done = 0
        self.relay = _splice.Relay(self.cl.fileno(), self.upstream, self.pipe, self._done, on_token)

    def _done(self) -> None:
        self.done += 1

    def feed(self, data: bytes) -> None:
        self.relay.data_received(data)

    def received(self) -> bytes:
        got = bytearray()
        self.client.settimeout(0.2)
        try:
            while chunk := self.client.recv(1 << 20):
                got += chunk
        except TimeoutError:
            pass
        return bytes(got)

    def close(self) -> None:
        self.relay.close()
        for s in (self.cl, self.client):
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the relay reported through sys.unraisablehook (a callback's error it does not
    pass on), in order."""
    got: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", got.append)
    return got


def _returned(call: Callable[[], object]) -> object:
    """What ``call()`` returned: a relay method typed ``-> None`` is checked to return None
    rather than raise."""
    return call()


def _wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 5)[0], "nothing came"


def _dechunk(raw: bytes, last: bool = False) -> list[bytes]:
    """Each chunk's data, every size and CRLF checked. A last chunk (0 CRLF CRLF: a body's
    end, another body may follow) only with ``last``: a relay without end_body writes none,
    the proxy's own final send does."""
    out, i = [], 0
    while i < len(raw):
        eol = raw.index(b"\r\n", i)
        size = int(raw[i:eol], 16)
        start = eol + 2
        if size == 0:
            assert last, "the relay never writes the last chunk unless asked (end_body)"
            assert raw[i : i + 5] == b"0\r\n\r\n", "a last chunk with trailers"
            i += 5
            continue
        assert raw[start + size : start + size + 2] == b"\r\n", "a chunk's CRLF is missing"
        out.append(raw[start : start + size])
        i = start + size + 2
    return out


def _complete(raw: bytes, size: int) -> bool:
    try:
        return len(b"".join(_dechunk(raw))) >= size
    except (ValueError, AssertionError):  # a chunk still coming
        return False


def _framed(payloads: list[bytes], ext: bytes = b"", trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in payloads)
    return body + b"0" + ext + b"\r\n" + trailer + b"\r\n"


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=6),
    ext=st.sampled_from([b"", b";x=1", b' ;name="q"', b"\t"]),
    trailer=st.sampled_from([b"", b"x-t: 1\r\n", b"a: b\r\nc: d\r\n"]),
)
def test_any_chunked_body_cut_anywhere_reaches_the_client_whole(
    payloads: list[bytes], cuts: list[int], ext: bytes, trailer: bytes
) -> None:
    r = Rig()
    try:
        wire = _framed(payloads, ext, trailer)
        bounds = [*sorted({c for c in cuts if c < len(wire)}), len(wire)]
        at = 0
        for b in bounds:
            r.feed(wire[at:b])
            at = b
        assert r.relay.status == _splice.END
        assert r.done == 1 and not r.upstream.reading  # paused: the parser takes it back
        assert b"".join(_dechunk(r.received())) == b"".join(payloads)
        assert r.relay.total == sum(map(len, payloads))
    finally:
        r.close()


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            # Whole keys and pieces of them, so that matches and near misses of each branch
            # (a tool call's "function":{"name":... too) come up, not just stray bytes.
            [
                *(b'"', b'"content"', b'"text"', b'"delta', b'"reasoning', b'_content"'),
                *(b'"refusal"', b'"arguments"', b'"function"', b'"function":{', b'"name"'),
                *(b'"name":', b"name", b"{", b":", b'":', b" ", b"\t", b"\n", b"x", b"\\", b"'"),
            ]
        ),
        max_size=16,
    ).map(b"".join)
)
def test_the_c_first_token_test_is_the_dashboards(data: bytes) -> None:
    assert _splice.carries_token(data) == carries_token(data)


@pytest.mark.parametrize(
    ("reads", "at"),
    [
        ([b'data: {"role": "assistant"}\n\n', b'data: {"content": "Hi"}\n\n'], 2),
        ([b'data: {"content": ""}\n\n', b"x", b'{"text":"a"}'], 3),
        ([b'{"delta":\n "b"}'], 1),
    ],
)
def test_the_first_read_that_carries_a_token_is_told_once(reads: list[bytes], at: int) -> None:
    seen: list[int] = []
    rig: Rig  # the local one in the lambda below, not the fixture
    rig = Rig(on_token=lambda: seen.append(rig.relay.reads))
    try:
        for data in [*reads, b'{"content": "more"}']:
            rig.feed(_chunk(data))
        assert seen == [at]
    finally:
        rig.close()


def test_each_read_leaves_as_one_chunk(rig: Rig) -> None:
    rig.feed(b"2\r\nab\r\n3\r\ncde\r\n")
    rig.feed(b"1\r\nf\r\n")
    assert _dechunk(rig.received()) == [b"abcde", b"f"]
    assert rig.relay.status == _splice.RUNNING and rig.relay.reads == 2
    assert rig.pipe.writes == 0  # straight to the socket: the transport was not needed


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",  # not a size
        b"\r\n",  # no digits
        b"5\r\nhelloX",  # no CRLF after the data
        b"5\nhello\r\n",  # a bare LF
        b"5;ext\n",  # a bare LF after an extension
        b"5 x\r\n",  # junk after the size
        b"10000000001\r\n",  # past the largest chunk
        b"0\r\nx\n",  # a trailer ended by a bare LF
    ],
)
def test_bytes_that_are_not_chunked_framing_end_it(rig: Rig, wire: bytes) -> None:
    rig.feed(wire)
    assert rig.relay.status == _splice.BAD_FRAMING
    assert rig.done == 1 and not rig.upstream.reading


def test_bytes_after_the_last_chunk_are_reported(rig: Rig) -> None:
    rig.feed(b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert rig.relay.status == _splice.END_EXTRA
    assert _dechunk(rig.received()) == [b"a"]


def test_an_upstream_that_closes_mid_body_is_reported(rig: Rig) -> None:
    rig.feed(b"5\r\nhel")
    rig.relay.eof_received()
    assert rig.relay.status == _splice.UPSTREAM_CLOSED and rig.done == 1
    assert _dechunk(rig.received()) == [b"hel"]  # what came went on, as a whole chunk
    rig.relay.connection_lost(None)  # the close that follows changes nothing
    assert rig.relay.status == _splice.UPSTREAM_CLOSED and rig.done == 1


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), "UPSTREAM_FAILED"),
        (ssl.SSLError(1, "bad record mac"), "UPSTREAM_FAILED"),
        (None, "UPSTREAM_CLOSED"),
    ],
)
def test_an_upstream_connection_lost_mid_body_is_reported_with_its_exception(
    rig: Rig, exc: BaseException | None, status: str
) -> None:
    rig.feed(b"5\r\nhel")
    rig.relay.connection_lost(exc)
    assert rig.relay.status == getattr(_splice, status) and rig.relay.lost is exc
    assert rig.done == 1
    failure = splice._failure(rig.relay)
    assert isinstance(failure, ConnectionLost)
    what = type(exc).__name__ if exc is not None else "closed by the upstream"
    assert str(failure) == f"{what} before the response was complete"  # as gateway.client's


def test_a_client_connection_lost_ends_it_before_another_send(rig: Rig) -> None:
    """h1 calls the pipe's on_writable (resume) as the client's connection is lost: the relay
    ends there, so no later read is written to a number the transport no longer owns."""
    rig.feed(b"1\r\na\r\n")
    rig.relay.resume()  # writable, not closing: nothing changes
    assert rig.relay.status == _splice.RUNNING and rig.upstream.resumes == 0
    rig.pipe.closing = True
    rig.relay.resume()
    assert rig.relay.status == _splice.CLIENT_GONE and rig.done == 1
    assert not rig.upstream.reading
    rig.pipe.closing = False
    rig.feed(b"1\r\nb\r\n")
    assert _dechunk(rig.received()) == [b"a"] and rig.relay.total == 1


def test_asked_to_it_writes_the_bodys_last_chunk_with_its_last_data() -> None:
    rig = Rig()
    rig.relay.close()
    rig.relay = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, rig._done, end_body=True)
    try:
        rig.feed(b"1\r\na\r\n")
        assert not rig.relay.body_ended
        rig.feed(b"1\r\nb\r\n0\r\n\r\n")
        assert rig.relay.status == _splice.END and rig.relay.body_ended
        assert rig.received() == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"
    finally:
        rig.close()
    alone = Rig()  # the last chunk in a read of its own
    alone.relay.close()
    alone.relay = _splice.Relay(
        alone.cl.fileno(), alone.upstream, alone.pipe, alone._done, None, end_body=True
    )
    try:
        alone.feed(b"1\r\na\r\n")
        alone.feed(b"0\r\nx-trailer: 1\r\n\r\n")  # trailers are not passed on
        assert alone.relay.status == _splice.END and alone.relay.body_ended
        assert alone.received() == b"1\r\na\r\n0\r\n\r\n"
    finally:
        alone.close()


def _sse_rig(held: bytes = b"", on_token: Any = None) -> Rig:
    rig = Rig()
    rig.relay.close()
    rig.relay = _splice.Relay(
        rig.cl.fileno(),
        rig.upstream,
        rig.pipe,
        rig._done,
        on_token,
        end_body=True,
        sse=True,
        held=held,
    )
    return rig


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _chunked(pieces: list[bytes]) -> list[bytes]:
    """Each piece as one chunk, then the body's last chunk: an upstream's writes, in order."""
    return [*map(_chunk, pieces), b"0\r\n\r\n"]


def test_an_event_stream_sends_whole_events_and_holds_the_rest() -> None:
    told: list[int] = []
    rig = _sse_rig(held=b'data: {"a', on_token=lambda: told.append(1))  # from the Python side
    try:
        rig.feed(_chunk(b'": 1}\n\ndata: {"content": "b'))
        assert _dechunk(rig.received()) == [b'data: {"a": 1}\n\n']
        assert told == []  # the token's event is held: not told yet
        rig.feed(_chunk(b'"}\n\n'))  # its rest: the whole event, then
        assert _dechunk(rig.received()) == [b'data: {"content": "b"}\n\n'] and told == [1]
        rig.feed(_chunk(b"data: 1\r\n\r\n"))  # a read that ends an event: straight out
        assert _dechunk(rig.received()) == [b"data: 1\r\n\r\n"]
        rig.feed(_chunk(b"data: [DONE]"))  # no blank line before the body's end: sent at it
        assert rig.received() == b""
        rig.feed(b"0\r\n\r\n")
        assert rig.relay.status == _splice.END and rig.relay.body_ended
        assert rig.received() == _chunk(b"data: [DONE]") + b"0\r\n\r\n"
        assert rig.relay.total == len(b'data: {"a": 1}\n\ndata: {"content": "b"}\n\n') + len(
            b"data: 1\r\n\r\ndata: [DONE]"
        )
    finally:
        rig.close()


@pytest.mark.parametrize("end", ["reset", "close"])
def test_a_cut_drops_the_half_event_it_held(end: str) -> None:
    rig = _sse_rig()
    try:
        rig.feed(_chunk(b'data: 1\n\ndata: {"half'))
        if end == "reset":
            rig.relay.connection_lost(ConnectionResetError(errno.ECONNRESET, "reset"))
        else:
            rig.relay.eof_received()
        assert rig.relay.status != _splice.RUNNING
        # The client's stream stands after a whole event, for the error event that follows.
        assert _dechunk(rig.received()) == [b"data: 1\n\n"]
    finally:
        rig.close()


def test_an_event_stream_that_never_ends_an_event_still_streams() -> None:
    rig = _sse_rig()
    try:
        rig.feed(_chunk(b"x" * 60_000))
        assert rig.received() == b""
        rig.feed(_chunk(b"y" * 6_000))  # past 64 KiB held: all of it goes
        assert _dechunk(rig.received()) == [b"x" * 60_000 + b"y" * 6_000]
    finally:
        rig.close()


def test_held_bytes_need_an_event_stream_that_ends_its_body(rig: Rig) -> None:
    with pytest.raises(ValueError, match="sse=True"):
        _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, print, held=b"x")
    with pytest.raises(ValueError, match="end_body"):  # the held rest goes with the last chunk
        _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, print, sse=True)


@settings(max_examples=80, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.text(alphabet="ab{}: ", max_size=12),
            st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\r\r"]),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=8),
)
def test_the_c_holds_back_as_the_python_framer_does(
    lines: list[tuple[str, str]], cuts: list[int]
) -> None:
    wire = "".join(t + end for t, end in lines).encode()
    bounds = [0, *sorted({c for c in cuts if c < len(wire)}), len(wire)]
    reads = [wire[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    framer = EventFramer()
    expected = [out for r in reads if (out := framer.take(r))]
    if framer.held:
        expected.append(framer.held)
    rig = _sse_rig()
    try:
        for r in reads:
            rig.feed(_chunk(r))
        rig.feed(b"0\r\n\r\n")
        assert rig.relay.status == _splice.END
        got = bytearray()
        rig.client.setblocking(False)  # loopback: what the relay sent is queued here already
        with contextlib.suppress(BlockingIOError):
            while chunk := rig.client.recv(1 << 16):
                got += chunk
        assert _dechunk(bytes(got), last=True) == expected
    finally:
        rig.close()


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"1\r\na\r\n0\r\n\r\n", "END"),
        (b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n", "END_EXTRA"),  # bytes after: not passed on
    ],
)
def test_the_last_chunk_is_written_once_whatever_follows_the_body(wire: bytes, status: str) -> None:
    rig = Rig()
    rig.relay.close()
    rig.relay = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, rig._done, end_body=True)
    try:
        rig.feed(wire)
        assert rig.relay.status == getattr(_splice, status) and rig.relay.body_ended
        assert rig.received() == b"1\r\na\r\n0\r\n\r\n"
    finally:
        rig.close()


def test_a_client_gone_at_the_last_send_has_no_body_end() -> None:
    rig = Rig()
    rig.relay.close()
    rig.relay = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, rig._done, end_body=True)
    try:
        rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        rig.client.close()  # a reset: the send fails
        rig.feed(b"0\r\n\r\n")
        assert rig.relay.status == _splice.CLIENT_GONE and not rig.relay.body_ended
    finally:
        rig.relay.close()
        rig.cl.close()


def test_a_last_chunk_behind_bytes_the_transport_holds_goes_there_too() -> None:
    rig = Rig()
    rig.relay.close()
    rig.relay = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, rig._done, end_body=True)
    try:
        rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        while not rig.pipe.held:
            rig.feed(_chunk(b"x" * 30_000))
        writes = rig.pipe.writes
        rig.feed(b"1\r\nz\r\n0\r\n\r\n")
        assert rig.relay.body_ended and rig.pipe.writes == writes + 1
        assert rig.pipe.held.endswith(b"1\r\nz\r\n0\r\n\r\n")
    finally:
        rig.close()


def test_a_client_that_reset_is_seen_at_the_next_send(rig: Rig) -> None:
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    rig.client.close()  # a reset: the next send fails
    rig.feed(b"1\r\na\r\n")
    assert rig.relay.status == _splice.CLIENT_GONE and rig.done == 1
    assert not rig.upstream.reading


def test_a_client_whose_transport_closed_is_gone_before_anything_more_is_written(
    rig: Rig,
) -> None:
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while not rig.pipe.held:
        rig.feed(_chunk(b"x" * 30_000))
    rig.pipe.closing = True  # its write failed: the transport closes the connection
    writes = rig.pipe.writes
    rig.feed(b"1\r\nz\r\n")
    assert rig.relay.status == _splice.CLIENT_GONE and rig.pipe.writes == writes


def test_a_full_client_holds_the_upstream_back_and_gets_every_byte_in_order(rig: Rig) -> None:
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(read_to_eof(rig.client)))
    sent: list[bytes] = []

    def chunk(payload: bytes) -> None:
        sent.append(payload)
        rig.feed(_chunk(payload))

    while not rig.pipe.held:  # till the socket takes no more: the rest went to the transport
        chunk(os.urandom(30_000))
    assert rig.upstream.reading  # the transport's buffer is under its high-water mark
    rig.pipe.flow.write_paused = True
    chunk(b"after the socket filled: behind what the transport holds")
    assert rig.pipe.writes == 2 and not rig.upstream.reading and rig.relay.paused
    rig.relay.resume()  # the client's connection drained: on_writable
    assert rig.upstream.reading and rig.upstream.resumes == 1 and not rig.relay.paused
    rig.pipe.flow.write_paused = False
    reader.start()
    rig.pipe.flush()
    chunk(b"straight to the socket again")
    assert rig.pipe.writes == 2
    rig.feed(b"0\r\n\r\n")
    assert rig.relay.status == _splice.END and rig.done == 1
    rig.client.shutdown(socket.SHUT_WR)
    rig.cl.shutdown(socket.SHUT_WR)  # the reader's end of file
    reader.join(10)
    assert b"".join(_dechunk(bytes(got))) == b"".join(sent)


def test_a_probe_after_a_silence_finds_a_client_that_left() -> None:
    rig = Rig()
    try:
        rig.feed(b"1\r\na\r\n")
        assert rig.relay.probe() is False and rig.relay.status == _splice.RUNNING
        rig.client.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request: still there
        _wait_readable(rig.cl)
        assert rig.relay.probe() is False and rig.relay.status == _splice.RUNNING
        assert rig.cl.recv(100, socket.MSG_PEEK) == b"GET / HTTP/1.1\r\n"  # not taken
        rig.client.close()  # it leaves
        rig.cl.recv(100)  # (the pipelined bytes, taken: what is left to see is the close)
        _wait_readable(rig.cl)
        assert rig.relay.probe() is True
        assert rig.relay.status == _splice.CLIENT_GONE and rig.done == 1
        assert not rig.upstream.reading
        assert rig.relay.probe() is False  # ended: nothing more to ask
    finally:
        rig.relay.close()
        rig.cl.close()


def test_close_stops_it_and_a_late_read_reaches_nobody(rig: Rig) -> None:
    rig.relay.close()
    rig.relay.close()
    assert rig.relay.status == _splice.CLOSED and rig.done == 0
    rig.feed(b"1\r\na\r\n")
    rig.relay.eof_received()
    assert rig.relay.total == 0 and rig.relay.reads == 0 and rig.done == 0
    assert rig.relay.status == _splice.CLOSED
    rig.relay.resume()  # nothing held back: nothing resumed
    assert rig.upstream.resumes == 0


def test_a_relay_in_a_cycle_with_its_transport_is_collected() -> None:
    freed: list[int] = []

    class Transport(Upstream):
        def __del__(self) -> None:
            freed.append(1)

    cl, client = _tcp_pair()
    try:
        transport = Transport()
        relay = _splice.Relay(cl.fileno(), transport, Pipe(cl), lambda: None)
        transport.protocol = relay  # type: ignore[attr-defined]  # as a transport holds it
        del transport, relay
        gc.collect()
        assert freed == [1]
    finally:
        cl.close()
        client.close()


def test_an_error_in_the_owners_callback_is_reported_and_the_relay_still_ends(
    rig: Rig, reported: list[Any]
) -> None:
    """Not raised into the transport, which would close the upstream's connection behind an
    owner that was never told."""

    def boom() -> None:
        raise RuntimeError("owner failed")

    r = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, boom)
    try:
        r.data_received(b"0\r\n\r\n")
        assert r.status == _splice.END and not rig.upstream.reading
        assert [str(x.exc_value) for x in reported] == ["owner failed"]
    finally:
        r.close()


def test_a_pause_that_raises_is_reported_and_the_end_stands(rig: Rig, reported: list[Any]) -> None:

    def broken() -> None:
        raise RuntimeError("pause failed")

    rig.upstream.pause_reading = broken  # type: ignore[method-assign]
    rig.feed(b"1\r\na\r\n0\r\n\r\n")
    assert rig.relay.status == _splice.END and rig.done == 1
    assert [str(x.exc_value) for x in reported] == ["pause failed"]


def test_an_is_closing_that_raises_cuts_the_stream_and_is_reported(
    rig: Rig, reported: list[Any]
) -> None:

    class Odd:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while not rig.pipe.held:
        rig.feed(_chunk(b"x" * 30_000))
    rig.pipe.is_closing = lambda: Odd()  # type: ignore[assignment,method-assign,return-value]
    rig.feed(b"1\r\nz\r\n")  # bytes wait in the transport: the send asks is_closing() first
    assert rig.relay.status == _splice.LOCAL_FAILED and not rig.upstream.reading
    assert [type(x.exc_value) for x in reported] == [ValueError]


def test_a_resume_that_fails_ends_the_relay_instead_of_raising_into_the_client(
    rig: Rig, reported: list[Any]
) -> None:
    # resume() is the client connection's callback (h1 calls it from connection_lost too):
    # raising there would skip that connection's clean-up and leave the upstream paused.
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rig.pipe.flow.write_paused = True  # the client's transport is full: the upstream pauses
    while rig.upstream.reading:
        rig.feed(_chunk(b"x" * 30_000))

    def refuse() -> None:
        raise OSError("resume failed")

    rig.upstream.resume_reading = refuse  # type: ignore[method-assign]
    assert _returned(rig.relay.resume) is None
    assert rig.relay.status == _splice.LOCAL_FAILED and rig.done == 1
    assert [str(x.exc_value) for x in reported] == ["resume failed"]


def test_a_client_check_that_raises_in_resume_ends_the_relay_too(
    rig: Rig, reported: list[Any]
) -> None:

    def broken() -> bool:
        raise ValueError("no answer")

    rig.pipe.is_closing = broken  # type: ignore[method-assign]
    assert _returned(rig.relay.resume) is None
    assert rig.relay.status == _splice.LOCAL_FAILED and not rig.upstream.reading
    assert [str(x.exc_value) for x in reported] == ["no answer"]


def test_a_send_that_closes_the_relay_does_not_tell_the_first_token(rig: Rig) -> None:
    # A client write() that calls back into close() (uvloop's does not; a Python transport
    # may) drops the token callback while the read that carried the token is being sent.
    told: list[bool] = []
    relay = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, print, lambda: told.append(True))
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    filler = _splice.Relay(rig.cl.fileno(), rig.upstream, rig.pipe, print)
    while not rig.pipe.held:  # the socket full: the next send goes to the pipe's write()
        filler.data_received(_chunk(b"x" * 30_000))
    filler.close()
    rig.pipe.write = lambda _: relay.close()  # type: ignore[method-assign,assignment]
    relay.data_received(b'a\r\n"text":"a"\r\n')
    assert told == [] and relay.status == _splice.CLOSED


def test_a_relay_never_set_up_is_closed_to_every_call() -> None:
    relay = _splice.Relay.__new__(_splice.Relay)
    assert relay.status == _splice.CLOSED
    assert _returned(relay.resume) is None and relay.probe() is False
    relay.data_received(b"1\r\na\r\n")
    relay.close()
    assert relay.status == _splice.CLOSED


def test_a_failing_client_write_cuts_the_stream_and_is_reported(
    rig: Rig, reported: list[Any]
) -> None:
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def refuse(data: bytes) -> None:
        raise MemoryError

    rig.pipe.write = refuse  # type: ignore[method-assign]
    while rig.relay.status == _splice.RUNNING:
        rig.feed(_chunk(b"x" * 30_000))
    assert rig.relay.status == _splice.LOCAL_FAILED and rig.done == 1
    assert [type(r.exc_value) for r in reported] == [MemoryError]
    assert not rig.upstream.reading


def test_a_first_token_callback_that_raises_is_reported_and_the_stream_goes_on(
    reported: list[Any],
) -> None:

    def broken() -> None:
        raise RuntimeError("dashboard bookkeeping failed")

    rig = Rig(on_token=broken)
    try:
        rig.feed(b'a\r\n"text":"a"\r\n')
        rig.feed(b"1\r\nb\r\n")
        assert [str(r.exc_value) for r in reported] == ["dashboard bookkeeping failed"]
        assert _dechunk(rig.received()) == [b'"text":"a"', b"b"]
        assert rig.relay.status == _splice.RUNNING
    finally:
        rig.close()


def test_bad_arguments_are_refused(rig: Rig) -> None:
    # Wrong types on purpose (type: ignore[arg-type]): the C constructor must refuse them.
    with pytest.raises(TypeError):
        _splice.Relay(0, rig.upstream, rig.pipe, "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _splice.Relay(0, rig.upstream, rig.pipe, print, "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _splice.Relay("not a descriptor", rig.upstream, rig.pipe, print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="open"):
        _splice.Relay(-1, rig.upstream, rig.pipe, print)
    with pytest.raises(RuntimeError, match="once"):
        rig.relay.__init__(0, rig.upstream, rig.pipe, print)  # type: ignore[misc]
    with pytest.raises(TypeError):
        rig.relay.data_received(12)  # type: ignore[arg-type]  # not bytes


# --- gateway.http.relay handing a stream over, in process ---------------------------------


class TransportPipe:
    """gateway.http.asgi.ClientPipe on a real client connection's transport, as gateway.h1's
    Pipe is: what the splice is lent, and what is written around it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.buffered = transport.get_write_buffer_size
        self.flow = SimpleNamespace(write_paused=False)
        self.lent = self.aborted = self.ended = 0

    def on_writable(self, callback: Any) -> None:
        pass

    def lend(self) -> int | None:
        self.lent += 1
        self.transport.pause_reading()
        return int(self.transport.get_extra_info("socket").fileno())

    def give_back(self) -> None:
        self.transport.resume_reading()

    def abort(self) -> None:
        self.aborted += 1
        self.transport.abort()

    def body_ended(self) -> None:
        self.ended += 1


async def _client_side() -> tuple[TransportPipe, asyncio.StreamReader, asyncio.Server]:
    """A connection to a local listener: the gateway's end as a transport, the client's end
    as a StreamReader."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.StreamReader] = loop.create_future()

    async def on_client(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        accepted.set_result(reader)
        await asyncio.sleep(30)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    return TransportPipe(transport), await accepted, server


def _answer(*parts: bytes, gap_s: float = 0.01) -> Any:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            w.write(part)
            await w.drain()
            await asyncio.sleep(gap_s)

    return answer


async def _relay_once(
    srv: Scripted,
    client: Client,
    pipe: TransportPipe,
    idle_s: float = 5,
    token_seen: Any = None,
    probe_s: float = 5,
    framer: EventFramer | None = None,
) -> tuple[str, Any]:
    ex: Any = SimpleNamespace(scope={"extensions": {PIPE: lambda: pipe}}, body_bytes=0)
    resp = await client.request("GET", srv.url + "/")
    await resp.wait_body()
    try:
        with Watchdog(idle_s, 30, probe_s=probe_s) as dog:
            path = await relay(resp, _no_send, ex, dog, token_seen, True, framer)
    except BaseException:
        resp.close()
        raise
    assert resp.at_eof()
    resp.release()
    return path, ex


async def _no_send(_: Any) -> None:
    raise AssertionError("the pipe, not send, carries a piped stream")


def test_a_stream_goes_by_the_splice_and_its_connection_serves_the_next_request() -> None:
    tokens = [b"data: %d\n\n" % i for i in range(20)]

    async def main() -> None:
        pipe, reader, server = await _client_side()
        async with Scripted(_answer(*_chunked(tokens))) as srv:
            client = Client(1.0)
            path, ex = await _relay_once(srv, client, pipe)
            assert path == "splice" and pipe.lent == 1 and pipe.aborted == 0
            assert ex.body_bytes == sum(map(len, tokens))
            got = await reader.read(1 << 16)
            while not got.endswith(b"0\r\n\r\n"):  # the body's end, written by the splice
                got += await asyncio.wait_for(reader.read(1 << 16), 5)
            assert b"".join(_dechunk(got, last=True)) == b"".join(tokens) and pipe.ended == 1
            path, _ = await _relay_once(srv, client, pipe)  # the same upstream connection
            assert path == "splice" and srv.connections == 1
        server.close()

    run(main())


def test_an_event_stream_handed_to_the_splice_counts_and_tells_what_it_sends() -> None:
    # The Python sink holds half an event and hands it to the C, which sends it whole: counted
    # once (it was counted at the read and again as sent), its token told when sent.
    events = [
        b'data: 1\n\ndata: {"co',  # each read but the last ends in half an event
        b'ntent": "x"}\n\ndata: {"co',
        b'ntent": "y"}\n\ndata: {"co',
        b'ntent": "z"}\n\n',
        b"data: 2\n\n",
    ]

    async def main() -> None:
        pipe, reader, server = await _client_side()
        parts = _chunked(events)
        async with Scripted(_answer(*parts, gap_s=0.05)) as srv:
            told: list[int] = []
            framer = EventFramer()
            path, ex = await _relay_once(
                srv, Client(1.0), pipe, token_seen=lambda: told.append(1), framer=framer
            )
            got = await reader.read(1 << 16)
            while not got.endswith(b"0\r\n\r\n"):
                got += await asyncio.wait_for(reader.read(1 << 16), 5)
            sent = _dechunk(got, last=True)
            assert path == "splice" and b"".join(sent) == b"".join(events)
            assert all(s.endswith(b"\n\n") for s in sent)  # whole events only
            assert ex.body_bytes == sum(map(len, events))  # each byte once
            assert told == [1] and framer.held == b""
        server.close()

    run(main())


def test_a_stream_from_an_https_upstream_goes_by_the_splice_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay reads what the upstream's transport decrypted: TLS to the upstream (a
    gateway-to-gateway leg across an ocean) takes the splice as plain TCP does."""
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tokens = [b"data: %d\n\n" % i for i in range(30)]

    async def main() -> None:
        pipe, reader, server = await _client_side()
        parts = _chunked(tokens)
        async with Scripted(_answer(*parts, gap_s=0.002), tls=tls) as srv:
            client = Client(2.0)
            for _ in range(2):  # the second on the same TLS connection, back from the pool
                path, ex = await _relay_once(srv, client, pipe)
                assert path == "splice" and ex.body_bytes == sum(map(len, tokens))
            assert srv.connections == 1 and pipe.lent == 2 and pipe.ended == 2
            got = b""
            while got.count(b"0\r\n\r\n") < 2:  # each body's end, written by the splice
                got += await asyncio.wait_for(reader.read(1 << 16), 5)
            assert b"".join(_dechunk(got, last=True)) == b"".join(tokens) * 2
            await client.close()
        server.close()

    run(main())


@pytest.mark.parametrize(
    ("tail", "error"),
    [(b"5\r\nhel", ConnectionLost), (b"5\r\nhelloX", BadResponse)],
)
def test_an_upstream_failing_mid_splice_raises_what_the_python_relay_raises(
    tail: bytes, error: type[Exception]
) -> None:
    async def main() -> None:
        pipe, reader, server = await _client_side()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            # The hand-off comes at the boundary after the second chunk (the first is the
            # relay's to read), then the tail fails in the splice.
            await _answer(b"1\r\na\r\n", b"1\r\nb\r\n", tail, gap_s=0.1)(_, __, w)
            w.close()

        async with Scripted(answer) as srv:
            client = Client(1.0)
            with pytest.raises(error):
                await _relay_once(srv, client, pipe)
            assert pipe.lent == 1  # it failed in the splice, not before
            # The client's stream stands between chunks, for the error event that follows.
            got = await asyncio.wait_for(reader.read(1 << 16), 5)
            assert _dechunk(got)
            # The failed connection is not pooled: the next request opens another.
            resp = await client.request("GET", srv.url + "/")
            resp.close()
            assert srv.connections == 2
        server.close()

    run(main())


def test_an_upstream_silent_past_the_idle_deadline_times_the_splice_out() -> None:
    async def main() -> None:
        pipe, _, server = await _client_side()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            await _answer(b"1\r\na\r\n", b"1\r\nb\r\n", gap_s=0.1)(_, __, w)
            await asyncio.sleep(5)  # silent past the idle deadline, in the splice

        async with Scripted(answer) as srv:
            with pytest.raises(TimeoutError):
                await _relay_once(srv, Client(1.0), pipe, idle_s=0.3)
            assert pipe.lent == 1  # timed out in the splice, not before
        server.close()

    run(main())


def test_a_client_that_leaves_mid_splice_cancels_the_stream() -> None:
    """Here no server's disconnect hook cancels the task (gateway.h1's does, and the request
    ends as ClientGone): the client's connection is closed and the stream ends as cut."""

    async def main() -> None:
        pipe, reader, server = await _client_side()
        async with Scripted(_answer(*[b"1\r\na\r\n"] * 100, gap_s=0.05)) as srv:
            task = asyncio.ensure_future(_relay_once(srv, Client(1.0), pipe))
            await reader.read(1)
            await until(lambda: pipe.lent == 1, what="the hand-off to the splice")
            reader._transport.abort()  # type: ignore[attr-defined]  # the client leaves
            with pytest.raises(ConnectionLost, match="cut"):
                await asyncio.wait_for(task, 5)
            assert pipe.aborted == 1 and pipe.transport.is_closing()
            assert srv.connections == 1
        server.close()

    run(main())


def test_a_client_that_leaves_during_a_silence_is_found_by_the_probe() -> None:
    """Its reads are paused while the splice writes: without the probe nothing would tell
    before the next token (here 10 s away) or the idle deadline."""

    async def main() -> None:
        pipe, reader, server = await _client_side()

        async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
            await _answer(b"1\r\na\r\n", b"1\r\nb\r\n", gap_s=0.05)(_, __, w)
            await asyncio.sleep(10)  # a long silence, in the splice

        async with Scripted(answer) as srv:
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(_relay_once(srv, Client(1.0), pipe, probe_s=0.2))
            await until(lambda: pipe.lent == 1, what="the hand-off to the splice")
            t0 = loop.time()
            reader._transport.close()  # type: ignore[attr-defined]  # the client leaves quietly
            with pytest.raises(ConnectionLost, match="cut"):
                await asyncio.wait_for(task, 5)
            assert loop.time() - t0 < 2  # the probe's 0.2 s, not the 10 s silence
            assert pipe.aborted == 1
        server.close()

    run(main())


def test_a_splice_that_cannot_start_leaves_the_stream_to_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_splice, "Relay", refuse)

    async def main() -> None:
        pipe, reader, server = await _client_side()
        parts = [b"1\r\na\r\n", b"1\r\nb\r\n", b"0\r\n\r\n"]
        async with Scripted(_answer(*parts)) as srv:
            path, ex = await _relay_once(srv, Client(1.0), pipe)
            assert path == "python" and pipe.lent == 1 and ex.body_bytes == 2
            got = b""
            while b"".join(_dechunk(got)) != b"ab":
                got += await asyncio.wait_for(reader.read(100), 5)
        server.close()

    run(main())


def test_the_first_token_is_told_from_the_splice_as_from_python() -> None:
    events = [
        b'data: {"role": "assistant"}\n\n',
        b'data: {"content": "Hi"}\n\n',
        b"data: [DONE]\n\n",
    ]

    async def main() -> None:
        pipe, _, server = await _client_side()
        parts = _chunked(events)
        async with Scripted(_answer(*parts)) as srv:
            seen: list[int] = []
            path, ex = await _relay_once(srv, Client(1.0), pipe, token_seen=lambda: seen.append(1))
            assert path == "splice" and seen == [1] and ex.body_bytes == sum(map(len, events))
        server.close()

    run(main())


def test_the_switch_keeps_streams_on_the_python_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "AVAILABLE", False)

    async def main() -> None:
        pipe, _, server = await _client_side()
        async with Scripted(_answer(b"1\r\na\r\n", b"0\r\n\r\n")) as srv:
            path, ex = await _relay_once(srv, Client(1.0), pipe)
            assert path == "python" and pipe.lent == 0 and ex.body_bytes == 1
        server.close()

    run(main())


# --- a gateway: its metrics say which path its streams took -----------------------------


def _stream_paths(ops_url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{ops_url}/metrics").text.splitlines():
        if line.startswith("geogate_stream_bodies_total{"):
            out[line.split('path="')[1].split('"')[0]] = float(line.split()[-1])
    return out


@pytest.mark.parametrize("on", [True, False])
def test_a_gateways_streams_take_the_splice_unless_switched_off(tmp_path: Path, on: bool) -> None:
    gw, sim = start_fleet(
        tmp_path, "--tokens-per-s", "200", server_extra=f"splice = {str(on).lower()}"
    )
    try:
        body = {"model": "m", "stream": True, "max_tokens": 12, "messages": [{"role": "user"}]}
        # One keep-alive connection for all three, read by http.client's strict parser: a
        # byte after a body's last chunk would break the next response's status line.
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        for _ in range(3):
            conn.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(body),
                {"content-type": "application/json"},
            )
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("transfer-encoding") == "chunked"
            text = r.read().decode()
            assert not r.will_close
            events = [e for e in text.split("\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            tokens = [json.loads(e[6:]) for e in events[:-1]]
            assert sum(bool(t["choices"][0]["delta"].get("content")) for t in tokens) == 12
        conn.close()
        assert _stream_paths(gw.ops_url) == {"splice" if on else "python": 3.0}
    finally:
        gw.stop()
        sim.proc.kill()
