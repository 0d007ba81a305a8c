"""A stream's rest carried by gateway._splice: the C relay on real loopback TCP sockets, then
gateway.http.relay handing a stream to it in process, then a gateway whose metrics say which
path its streams took."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
from collections.abc import Iterator
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
from gateway.http.relay import relay
from gateway.http.watchdog import Watchdog
from gateway.traffic import carries_token
from tests.gateway.client.scripted import Scripted, run
from tests.support import start_fleet, until

# --- the C relay alone, its methods called as the event loop would -----------------------


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, the first non-blocking (the gateway's)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        peer = socket.create_connection(srv.getsockname())
        ours, _ = srv.accept()
    ours.setblocking(False)
    peer.settimeout(5)
    return ours, peer


class Rig:
    """An upstream peer, a client peer, the gateway's two ends between them, a Poller and a
    Relay on it; ``step()`` is the loop's turn: the poller's dispatch."""

    def __init__(self) -> None:
        self.up, self.upstream = _tcp_pair()
        self.cl, self.client = _tcp_pair()
        self.poller = _splice.Poller()
        self.done = 0
        self.relay = _splice.Relay(self.poller, self.up.fileno(), self.cl.fileno(), self._done)

    def _done(self) -> None:
        self.done += 1

    def step(self) -> int:
        return int(self.poller.dispatch())

    def feed(self, data: bytes) -> None:
        """The upstream sends ``data``; the relay reads it (one read, as one readiness)."""
        self.upstream.sendall(data)
        _wait_readable(self.up)
        self.step()

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
        if hasattr(self, "relay"):
            self.relay.close()
        for s in (self.up, self.upstream, self.cl, self.client):
            s.close()


def _wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5)[0], "nothing came"


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def _dechunk(raw: bytes) -> list[bytes]:
    """Each chunk's data, every size and CRLF checked; no last chunk expected."""
    out, i = [], 0
    while i < len(raw):
        eol = raw.index(b"\r\n", i)
        size = int(raw[i:eol], 16)
        start = eol + 2
        assert size > 0, "the relay never writes the last chunk: the proxy's own send does"
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
        assert r.done == 1 and not r.relay.watching
        assert b"".join(_dechunk(r.received())) == b"".join(payloads)
        assert r.relay.total == sum(map(len, payloads))
    finally:
        r.close()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b'"', b"content", b"text", b"delta", b":", b" ", b"\t", b"\n", b"x", b"\\", b"'"]
        ),
        max_size=14,
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
def test_the_first_read_that_carries_a_token_is_told_once(
    rig: Rig, reads: list[bytes], at: int
) -> None:
    seen: list[int] = []
    rig.relay.close()
    rig.relay = _splice.Relay(
        rig.poller,
        rig.up.fileno(),
        rig.cl.fileno(),
        lambda: None,
        lambda: seen.append(rig.relay.reads),
    )
    for data in [*reads, b'{"content": "more"}']:
        rig.feed(b"%x\r\n%b\r\n" % (len(data), data))
    assert seen == [at]


def test_each_read_leaves_as_one_chunk(rig: Rig) -> None:
    rig.feed(b"2\r\nab\r\n3\r\ncde\r\n")
    rig.feed(b"1\r\nf\r\n")
    assert _dechunk(rig.received()) == [b"abcde", b"f"]
    assert rig.relay.status == _splice.RUNNING and rig.relay.reads == 2


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
    assert rig.done == 1


def test_bytes_after_the_last_chunk_are_reported(rig: Rig) -> None:
    rig.feed(b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert rig.relay.status == _splice.END_EXTRA
    assert _dechunk(rig.received()) == [b"a"]


def test_an_upstream_that_closes_mid_body_is_reported(rig: Rig) -> None:
    rig.feed(b"5\r\nhel")
    rig.upstream.close()
    _wait_readable(rig.up)
    rig.step()
    assert rig.relay.status == _splice.UPSTREAM_CLOSED
    assert _dechunk(rig.received()) == [b"hel"]  # what came went on, as a whole chunk


def test_a_client_that_closed_is_seen_by_its_readability_and_by_a_send(rig: Rig) -> None:
    rig.client.close()
    _wait_readable(rig.cl)
    rig.step()
    assert rig.relay.status == _splice.CLIENT_GONE and rig.done == 1
    other = Rig()
    try:
        other.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        other.client.close()  # a reset: the next send fails
        other.feed(b"1\r\na\r\n")
        other.feed(b"1\r\nb\r\n")
        assert other.relay.status == _splice.CLIENT_GONE
    finally:
        other.close()


def test_a_full_client_holds_the_upstream_back_and_gets_every_byte(rig: Rig) -> None:
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent: list[bytes] = []
    while not rig.relay.pending:
        payload = os.urandom(30_000)
        sent.append(payload)
        rig.feed(b"%x\r\n%b\r\n" % (len(payload), payload))
    rig.upstream.sendall(b"1\r\nz\r\n0\r\n\r\n")
    rig.step()  # the upstream is not read while the client is full
    assert rig.relay.status == _splice.RUNNING and rig.relay.pending
    got = bytearray()
    rig.client.settimeout(5)  # a small window reopens on the sender's persist timer: wait
    while rig.relay.status == _splice.RUNNING:
        got += rig.client.recv(1 << 20)
        rig.step()
    assert rig.relay.status == _splice.END and rig.done == 1
    want = b"".join(sent) + b"z"
    while not _complete(bytes(got), len(want)):
        got += rig.client.recv(1 << 20)
    assert b"".join(_dechunk(bytes(got))) == want


def test_a_client_that_speaks_mid_stream_gets_the_stream_back_between_chunks(rig: Rig) -> None:
    rig.feed(b"5\r\nhel")
    rig.client.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request
    _wait_readable(rig.cl)
    rig.step()
    assert rig.relay.status == _splice.RUNNING  # mid-chunk: on to the chunk's end
    rig.feed(b"lo\r\n")
    assert rig.relay.status == _splice.YIELDED and rig.done == 1
    assert _dechunk(rig.received()) == [b"hel", b"lo"]
    assert rig.cl.recv(100) == b"GET / HTTP/1.1\r\n"  # left unread, for the server


def test_a_client_that_speaks_between_chunks_gets_the_stream_back_at_once(rig: Rig) -> None:
    rig.feed(b"1\r\na\r\n")
    rig.client.sendall(b"G")
    _wait_readable(rig.cl)
    rig.step()
    assert rig.relay.status == _splice.YIELDED and not rig.relay.watching


def test_close_unwatches_both_sockets_and_leaves_them_open(rig: Rig) -> None:
    assert rig.relay.watching
    rig.relay.close()
    rig.relay.close()
    assert rig.relay.status == _splice.CLOSED and not rig.relay.watching and rig.done == 0
    rig.upstream.sendall(b"1\r\na\r\n")
    _wait_readable(rig.up)
    assert rig.step() == 0  # a late readiness reaches nobody
    assert rig.relay.total == 0 and rig.up.recv(10) == b"1\r\na\r\n"  # still open, unread


def test_a_relay_its_owner_dropped_still_ends_and_lets_go(rig: Rig) -> None:
    del rig.relay  # the poller's events keep it alive till its end
    gc.collect()
    rig.feed(b"1\r\na\r\n0\r\n\r\n")
    assert rig.done == 1 and _dechunk(rig.received()) == [b"a"]
    rig.upstream.sendall(b"more")
    _wait_readable(rig.up)
    assert rig.step() == 0  # unwatched at its end


def test_a_number_reused_after_an_outside_close_stays_the_new_relays(rig: Rig) -> None:
    number = rig.cl.fileno()
    rig.cl.close()  # as a transport closed behind the relay's back would
    up2, upstream2 = _tcp_pair()
    cl2, client2 = _tcp_pair()
    try:
        if cl2.fileno() != number:  # the kernel hands out the lowest free number: make it so
            os.dup2(cl2.fileno(), number)
            cl2.close()
            cl2 = socket.socket(fileno=number)
        other = _splice.Relay(rig.poller, up2.fileno(), number, lambda: None)
        rig.relay.close()  # must not unwatch ``number``: it is the other relay's now
        upstream2.sendall(b"1\r\nq\r\n")
        _wait_readable(up2)
        rig.step()
        client2.settimeout(5)
        assert client2.recv(100) == b"1\r\nq\r\n"
        other.close()
    finally:
        for s in (up2, upstream2, cl2, client2):
            s.close()


def test_a_socket_replaced_under_a_waiting_relay_is_never_adopted(rig: Rig) -> None:
    """The upstream's number closed and reused while the relay waits for the client: when the
    client drains, the relay does not watch (and relay) the new socket under the old number."""
    rig.cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while not rig.relay.pending:
        rig.feed(b"%x\r\n%b\r\n" % (30_000, b"x" * 30_000))
    number = rig.up.fileno()
    stranger, stranger_peer = _tcp_pair()
    try:
        os.dup2(stranger.fileno(), number)  # the number now names another connection
        stranger_peer.sendall(b"5\r\nSECRT\r\n")
        rig.client.settimeout(5)
        got = bytearray()
        while rig.relay.status == _splice.RUNNING:
            got += rig.client.recv(1 << 20)
            rig.step()
        assert rig.relay.status == _splice.LOCAL_FAILED and not rig.relay.watching
        got += rig.received()
        assert b"SECRT" not in got
    finally:
        stranger.close()
        stranger_peer.close()


def test_an_error_in_the_owners_callback_reaches_the_loop(rig: Rig) -> None:
    def boom() -> None:
        raise RuntimeError("owner failed")

    up, upstream = _tcp_pair()
    cl, client = _tcp_pair()
    r = _splice.Relay(rig.poller, up.fileno(), cl.fileno(), boom)
    try:
        upstream.sendall(b"0\r\n\r\n")
        _wait_readable(up)
        with pytest.raises(RuntimeError, match="owner failed"):
            rig.step()
        assert r.status == _splice.END and not r.watching
    finally:
        r.close()
        for s in (up, upstream, cl, client):
            s.close()


def test_a_first_token_callback_that_raises_is_reported_and_the_stream_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def broken() -> None:
        raise RuntimeError("dashboard bookkeeping failed")

    rig.relay.close()
    rig.relay = _splice.Relay(rig.poller, rig.up.fileno(), rig.cl.fileno(), lambda: None, broken)
    rig.feed(b'a\r\n"text":"a"\r\n')
    rig.feed(b"1\r\nb\r\n")
    assert [str(r.exc_value) for r in reported] == ["dashboard bookkeeping failed"]
    assert _dechunk(rig.received()) == [b'"text":"a"', b"b"]
    assert rig.relay.status == _splice.RUNNING


def test_bad_arguments_are_refused(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        _splice.Relay(rig.poller, 0, 1, "not callable")
    with pytest.raises(TypeError):
        _splice.Relay("not a poller", 0, 1, print)
    with pytest.raises(ValueError, match="distinct"):
        _splice.Relay(rig.poller, 5, 5, print)
    with pytest.raises(OSError):
        _splice.Relay(rig.poller, 987654, 987655, print)  # not open
    with (tmp_path / "f").open("w") as f, pytest.raises(OSError):
        _splice.Relay(rig.poller, f.fileno(), rig.cl.fileno(), print)  # not pollable
    with pytest.raises(TypeError):
        _splice.Poller(1)


# --- gateway.http.relay handing a stream over, in process ---------------------------------


class TransportPipe:
    """gateway.http.asgi.ClientPipe on a real client connection's transport, as gateway.h1's
    Pipe is: what the splice is lent, and what is written around it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.flow = SimpleNamespace(write_paused=False)
        self.lent = self.aborted = 0

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
    return TransportPipe(transport), await accepted, server  # type: ignore[arg-type]


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
) -> tuple[str, Any]:
    ex: Any = SimpleNamespace(scope={"extensions": {PIPE: lambda: pipe}}, body_bytes=0)
    resp = await client.request("GET", srv.url + "/")
    await resp.wait_body()
    try:
        with Watchdog(idle_s, 30) as dog:
            path = await relay(resp, _no_send, ex, dog, token_seen)
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
        async with Scripted(
            _answer(*(b"%x\r\n%b\r\n" % (len(t), t) for t in tokens), b"0\r\n\r\n")
        ) as srv:
            client = Client(1.0)
            path, ex = await _relay_once(srv, client, pipe)
            assert path == "splice" and pipe.lent == 1 and pipe.aborted == 0
            assert ex.body_bytes == sum(map(len, tokens))
            got = await reader.read(1 << 16)
            while b"".join(_dechunk(got)) != b"".join(tokens):
                got += await asyncio.wait_for(reader.read(1 << 16), 5)
            path, _ = await _relay_once(srv, client, pipe)  # the same upstream connection
            assert path == "splice" and srv.connections == 1
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
            await _answer(b"1\r\na\r\n", tail)(_, __, w)
            w.close()

        async with Scripted(answer) as srv:
            with pytest.raises(error):
                await _relay_once(srv, Client(1.0), pipe)
            # The client's stream stands between chunks, for the error event that follows.
            got = await asyncio.wait_for(reader.read(1 << 16), 5)
            assert _dechunk(got)
        server.close()

    run(main())


def test_an_upstream_silent_past_the_idle_deadline_times_the_splice_out() -> None:
    async def main() -> None:
        pipe, _, server = await _client_side()
        async with Scripted(_answer(b"1\r\na\r\n", b"1\r\nb\r\n", gap_s=5)) as srv:
            with pytest.raises(TimeoutError):
                await _relay_once(srv, Client(1.0), pipe, idle_s=0.3)
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
        parts = [b"%x\r\n%b\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
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
        for _ in range(3):
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                events = [e for e in r.iter_lines() if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            tokens = [json.loads(e[6:]) for e in events[:-1]]
            assert sum(bool(t["choices"][0]["delta"].get("content")) for t in tokens) == 12
        assert _stream_paths(gw.ops_url) == {"splice" if on else "python": 3.0}
    finally:
        gw.stop()
        sim.proc.kill()
