"""A streamed answer's body on to the client: through the server's pipe (uvicorn) or the
request's own loop (granian), with a client that cannot keep up holding the upstream back."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gateway.client import Client
from gateway.client.conn import Conn
from gateway.http.asgi import PIPE, Message
from gateway.http.relay import relay
from gateway.http.watchdog import Watchdog
from tests.gateway.client.scripted import Scripted, run
from tests.support import (
    UpstreamSpec,
    gateway_toml,
    start_gateway,
    start_sim,
    until,
)

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

TOKENS = 60_000  # ~14 MB of SSE: more than the kernel's socket buffers hold between the two


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("engine", ["uvicorn", "granian"])
def test_a_client_that_stops_reading_holds_the_upstream_back(tmp_path: Path, engine: str) -> None:
    # idle_s under the client's stall: the upstream's reading is paused by the gateway then,
    # and that silence must not time the stream out as the upstream's (nor count against it).
    sim = start_sim(tmp_path, "s", "eu-central", ["m"], "--tokens-per-s", "0")
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    gw = start_gateway(
        tmp_path,
        lambda p: gateway_toml(p, ups, extra="[timeouts]\nidle_s = 1.0\n").replace(
            "[server]", f'[server]\nengine = "{engine}"'
        ),
    )
    try:
        body = json.dumps(
            {"model": "m", "stream": True, "max_tokens": TOKENS, "messages": [{"role": "user"}]}
        ).encode()
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.connect(("127.0.0.1", gw.port))
            before = _rss_kib(gw.proc.pid)
            s.sendall(head + body)
            time.sleep(2)  # reading nothing while the backend writes as fast as it can
            grown = _rss_kib(gw.proc.pid) - before
            got = bytearray()
            s.settimeout(20)
            while not got.endswith(b"0\r\n\r\n"):
                chunk = s.recv(1 << 20)
                assert chunk, "the gateway closed the stream early"
                got += chunk
        head_end = got.index(b"\r\n\r\n") + 4
        assert got.startswith(b"HTTP/1.1 200"), bytes(got[:200])
        assert b"transfer-encoding: chunked" in got[:head_end].lower()
        events = _dechunk(bytes(got[head_end:])).split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        assert len([e for e in events if b'"content": "' in e]) >= TOKENS
        # Held back, the backend's ~14 MB stay in the backend and the sockets' buffers.
        assert grown < 8 * 1024, f"the gateway grew by {grown} KiB while its client stalled"
        metrics = httpx.get(f"{gw.ops_url}/metrics").text
        aborted = [ln for ln in metrics.splitlines() if ln.startswith("geogate_stream_aborted_")]
        # Each cause's series is there from the start, at 0 (an increase() sees the first).
        assert aborted and all(ln.endswith(" 0.0") for ln in aborted), "the stall was cut"
    finally:
        gw.stop()
        sim.proc.kill()


def _dechunk(raw: bytes) -> bytes:
    """An HTTP/1.1 chunked body, decoded (every size and CRLF checked on the way)."""
    out, i = bytearray(), 0
    while True:
        eol = raw.index(b"\r\n", i)
        size = int(raw[i:eol], 16)
        start = eol + 2
        assert raw[start + size : start + size + 2] == b"\r\n", "a chunk's CRLF is missing"
        if size == 0:
            assert start + 2 == len(raw), "bytes after the last chunk"
            return bytes(out)
        out += raw[start : start + size]
        i = start + size + 2


class Pipe:
    """gateway.http.asgi.ClientPipe that takes ``room`` writes, then reports itself full:
    each write's chunk unframed again, to compare."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.writes: list[bytes] = []
        self.writable: Any = None
        self.lost = False  # the client's connection closed
        self.flow = SimpleNamespace(write_paused=False)
        self.is_closing = lambda: self.lost

    def write(self, framed: bytes) -> None:
        size, _, rest = framed.partition(b"\r\n")
        assert rest.endswith(b"\r\n") and int(size, 16) == len(rest) - 2, framed
        self.writes.append(rest[:-2])
        self.flow.write_paused = len(self.writes) >= self.room

    def on_writable(self, callback: Any) -> None:
        self.writable = callback

    def lend(self) -> int | None:
        return None  # as a TLS client's: a hand-off finds nothing to lend, and Python goes on

    def give_back(self) -> None:
        raise AssertionError("nothing was lent")

    def abort(self) -> None:
        self.lost = True

    def drained(self) -> None:
        """As gateway.h1.conn.H1.resume_writing: the flag off, then the callback."""
        self.flow.write_paused = False
        self.writable()


def test_the_pipe_gets_each_reads_chunks_together_and_pauses_the_upstream_when_full() -> None:
    release = asyncio.Event()

    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"1\r\na\r\n1\r\nb\r\n")  # two chunks in one write: one read, likely
        await w.drain()
        await release.wait()
        w.write(b'c\r\n"text": "cd"\r\n0\r\n\r\n')  # the first token
        await w.drain()

    async def main() -> None:
        pipe = Pipe(room=1)
        ex: Any = SimpleNamespace(scope={"extensions": {PIPE: lambda: pipe}}, body_bytes=0)
        seen: list[int] = []

        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            await resp.wait_body()
            conn = resp._conn
            assert conn is not None
            await until(lambda: len(conn.chunks) == 2, what="both chunks")
            with Watchdog(5, 5) as dog:
                task = asyncio.ensure_future(
                    relay(resp, _no_send, ex, dog, lambda: seen.append(len(pipe.writes)))
                )
                await until(lambda: pipe.writes == [b"ab"], what="one write of both")  # joined
                assert conn.paused  # the pipe said it was full
                assert pipe.writable is not None
                release.set()
                await asyncio.sleep(0.05)
                assert pipe.writes == [b"ab"]  # nothing read while paused
                pipe.room = 10
                pipe.drained()  # the client drained
                await asyncio.wait_for(task, 2)
            assert pipe.writes == [b"ab", b'"text": "cd"'] and pipe.writable is None
            assert ex.body_bytes == 14 and seen == [1]  # once, at the second write
            assert resp.at_eof()
            resp.release()
            await client.close()

    run(main())


def test_a_chunk_for_a_client_already_gone_is_not_written_nor_counted() -> None:
    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        await asyncio.Event().wait()  # the rest never comes: the stream stays open

    async def main() -> None:
        pipe = Pipe(room=10)
        pipe.lost = True
        ex: Any = SimpleNamespace(scope={"extensions": {PIPE: lambda: pipe}}, body_bytes=0)
        async with Scripted(answer) as srv:
            client = Client(1.0)
            resp = await client.request("GET", srv.url + "/")
            conn = resp._conn
            assert conn is not None
            with Watchdog(5, 5) as dog:
                task = asyncio.ensure_future(relay(resp, _no_send, ex, dog, None))
                # Nobody to write to: the upstream is held back until the disconnect hook
                # ends the request (here: the cancel below).
                await until(lambda: conn.paused, what="the upstream paused")
                assert pipe.writes == [] and ex.body_bytes == 0
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            resp.close()
            await client.close()

    run(main())


async def _no_send(message: Any) -> None:
    raise AssertionError("a piped body does not go through send")


def test_a_pipe_full_at_the_last_chunk_leaves_the_connection_ready_for_the_next_request() -> None:
    go, wrote = asyncio.Event(), asyncio.Event()  # the first chunk alone in its read, then the rest

    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await w.drain()
        await go.wait()
        go.clear()
        w.write(b"1\r\nb\r\n0\r\n\r\n")  # the last chunk and the end in one read
        await w.drain()
        wrote.set()

    async def main() -> None:
        pipe = Pipe(room=0)  # full after every write: the client never catches up in time
        ex: Any = SimpleNamespace(scope={"extensions": {PIPE: lambda: pipe}}, body_bytes=0)
        async with Scripted(answer) as srv:
            client = Client(1.0)
            for _ in range(2):  # the second on the pooled connection: it must be read
                resp = await client.request("GET", srv.url + "/")
                await resp.wait_body()
                conn = resp._conn
                assert conn is not None
                with Watchdog(5, 5) as dog:
                    task = asyncio.ensure_future(relay(resp, _no_send, ex, dog, None))

                    def paused(c: Conn = conn) -> bool:
                        return c.paused

                    await until(paused, what="a pause after the first chunk")
                    go.set()
                    await wrote.wait()  # the rest waits in the socket while reading is paused
                    wrote.clear()
                    pipe.drained()  # the rest comes in one read, and again full
                    await asyncio.wait_for(task, 2)
                assert resp.at_eof() and not conn.paused
                resp.release()
                assert client.idle_count() == 1
            assert srv.connections == 1 and pipe.writes == [b"a", b"b"] * 2
            await client.close()

    run(main())


def test_the_request_loops_path_counts_what_it_sends() -> None:
    """Without the server's pipe (granian, hypercorn) each chunk goes by the server's send:
    the access line's byte count is kept where it is sent, as the pipe's sink keeps it."""
    chunks = [b'data: {"role":"assistant"}\n\n', b'data: {"content":"hi"}\n\n', b""]

    async def read() -> bytes:
        return chunks.pop(0)

    sent: list[bytes] = []

    async def send(message: Message) -> None:
        sent.append(message["body"])

    resp: Any = SimpleNamespace(reader=lambda: read)
    ex: Any = SimpleNamespace(scope={}, body_bytes=0)
    watchdog: Any = SimpleNamespace(touch=lambda: None)
    seen: list[int] = []
    path = asyncio.run(relay(resp, send, ex, watchdog, lambda: seen.append(1)))
    assert path == "python" and len(sent) == 2
    assert ex.body_bytes == sum(map(len, sent)) == 52
    assert seen == [1]  # the first chunk that carries a token, once
