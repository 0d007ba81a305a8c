"""The upstream HTTP clients bench/upstream_client.py compares, behind one small interface:
``get(url)`` reads a whole answer, ``stream(url)`` reads one chunk at a time as the gateway's
proxy does (await a chunk, hand it on) and returns how many it got and when the first came
(perf_counter seconds; a client that buffers the body shows it there), ``close()``.

Each client is set up the way the gateway would use it: a pool without an overall cap, no
automatic decompression, no redirects. HTTP/2 is h2c with prior knowledge (what a gateway-to-
gateway leg over plain TCP would speak; granian serves it). The Rust clients (pyreqwest, rnet)
run their I/O on a Tokio runtime in threads of their own: process CPU time counts those
threads too, which is the fair comparison (they are the gateway worker's CPU as well).

pycurl has no asyncio API: ``_CurlLoop`` drives a CurlMulti from the event loop with libcurl's
socket/timer callbacks (the multi_socket_action API), one easy handle per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Client(Protocol):
    async def get(self, url: str) -> bytes: ...
    async def stream(self, url: str) -> tuple[int, float]: ...
    async def close(self) -> None: ...


class Aiohttp:
    def __init__(self) -> None:
        import aiohttp

        self.s = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )

    async def get(self, url: str) -> bytes:
        async with self.s.get(url, allow_redirects=False) as r:
            return await r.read()

    async def stream(self, url: str) -> tuple[int, float]:
        n, first = 0, 0.0
        async with self.s.get(url, allow_redirects=False) as r:
            while await r.content.readany():  # the gateway's read (gateway/http/upstream.py)
                n += 1
                first = first or time.perf_counter()
        return n, first

    async def close(self) -> None:
        await self.s.close()


class Geogate:
    """gateway.client: an asyncio protocol and httptools' parser, pooled keep-alive
    connections; what the gateway's proxy, prober and load poller use."""

    def __init__(self) -> None:
        from gateway.client import Client

        self.c = Client(3.0)

    async def get(self, url: str) -> bytes:
        return await (await self.c.request("GET", url)).read()

    async def stream(self, url: str) -> tuple[int, float]:
        n, first = 0, 0.0
        r = await self.c.request("GET", url)
        while await r.readany():  # the gateway's read (gateway/http/upstream.py)
            n += 1
            first = first or time.perf_counter()
        r.release()
        return n, first

    async def close(self) -> None:
        await self.c.close()


class Httpx:
    def __init__(self, http2: bool) -> None:
        import httpx

        self.s = httpx.AsyncClient(
            http1=not http2, http2=http2, limits=httpx.Limits(max_connections=None)
        )

    async def get(self, url: str) -> bytes:
        r = await self.s.get(url)
        return r.content

    async def stream(self, url: str) -> tuple[int, float]:
        n, first = 0, 0.0
        async with self.s.stream("GET", url) as r:
            async for _ in r.aiter_raw():
                n += 1
                first = first or time.perf_counter()
        return n, first

    async def close(self) -> None:
        await self.s.aclose()


class Pyreqwest:
    def __init__(self, http2: bool) -> None:
        from pyreqwest.client import ClientBuilder

        b = ClientBuilder().follow_redirects(False).gzip(False).brotli(False).zstd(False)
        b = b.max_connections(None)
        self.s = (b.http2_prior_knowledge() if http2 else b.http1_only()).build()

    async def get(self, url: str) -> bytes:
        r = await self.s.get(url).build().send()
        return bytes(await r.bytes())

    async def stream(self, url: str) -> tuple[int, float]:
        n, first = 0, 0.0
        # By default build_streamed() reads up to 64 KiB of the body before it returns the
        # response: a paced stream would arrive whole, at its end. 0 hands on each chunk.
        async with self.s.get(url).streamed_read_buffer_limit(0).build_streamed() as r:
            reader = r.body_reader
            while await reader.read_chunk() is not None:
                n += 1
                first = first or time.perf_counter()
        return n, first

    async def close(self) -> None:
        await self.s.close()


class Rnet:
    def __init__(self, http2: bool) -> None:
        import rnet

        kw: dict[str, Any] = {"http2_only": True} if http2 else {"http1_only": True}
        self.s = rnet.Client(allow_redirects=False, gzip=False, brotli=False, **kw)

    async def get(self, url: str) -> bytes:
        r = await self.s.get(url)
        try:
            body: bytes = await r.bytes()
            return body
        finally:
            await r.close()

    async def stream(self, url: str) -> tuple[int, float]:
        n, first = 0, 0.0
        r = await self.s.get(url)
        async with r.stream() as chunks:
            async for _ in chunks:
                n += 1
                first = first or time.perf_counter()
        await r.close()
        return n, first

    async def close(self) -> None:
        return None


class _CurlLoop:
    """A CurlMulti driven by the running asyncio loop (libcurl's multi_socket_action API)."""

    def __init__(self) -> None:
        import pycurl

        self.pc = pycurl
        self.loop = asyncio.get_running_loop()
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._timer)
        self.timer: asyncio.TimerHandle | None = None
        self.waiting: dict[Any, asyncio.Future[None]] = {}
        self.idle: list[Any] = []

    def _socket(self, what: int, fd: int, multi: Any, data: Any) -> None:
        pc, loop = self.pc, self.loop
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        if what in (pc.POLL_IN, pc.POLL_INOUT):
            loop.add_reader(fd, self._act, fd, pc.CSELECT_IN)
        if what in (pc.POLL_OUT, pc.POLL_INOUT):
            loop.add_writer(fd, self._act, fd, pc.CSELECT_OUT)

    def _timer(self, ms: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if ms >= 0:  # -1: no timer wanted
            self.timer = self.loop.call_later(ms / 1000, self._act, self.pc.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        self.multi.socket_action(fd, event)
        while True:
            queued, ok, failed = self.multi.info_read()
            for c in ok:
                self._finish(c, None)
            for c, _errno, msg in failed:
                self._finish(c, OSError(msg))
            if not queued:
                break

    def _finish(self, c: Any, exc: BaseException | None) -> None:
        self.multi.remove_handle(c)
        fut = self.waiting.pop(c)
        if not fut.done():
            fut.set_exception(exc) if exc else fut.set_result(None)

    async def perform(self, url: str, version: int, write: Callable[[bytes], Any]) -> int:
        pc = self.pc
        c = self.idle.pop() if self.idle else pc.Curl()
        c.setopt(pc.URL, url)
        c.setopt(pc.HTTP_VERSION, version)
        c.setopt(pc.WRITEFUNCTION, write)
        fut = self.loop.create_future()
        self.waiting[c] = fut
        self.multi.add_handle(c)  # libcurl asks for a 0 ms timer: the transfer starts there
        try:
            await fut
            return int(c.getinfo(pc.RESPONSE_CODE))
        finally:
            if c in self.waiting:
                self.waiting.pop(c)
                self.multi.remove_handle(c)
            self.idle.append(c)


class Pycurl:
    def __init__(self, http2: bool) -> None:
        import pycurl

        self.curl = _CurlLoop()
        self.version = (
            pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE if http2 else pycurl.CURL_HTTP_VERSION_1_1
        )

    async def get(self, url: str) -> bytes:
        parts: list[bytes] = []
        await self.curl.perform(url, self.version, parts.append)
        return b"".join(parts)

    async def stream(self, url: str) -> tuple[int, float]:
        # libcurl hands chunks to a callback inside socket_action; the gateway's proxy would
        # queue them for the request's task to send on, so this does too.
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        done = asyncio.ensure_future(self.curl.perform(url, self.version, q.put_nowait))
        done.add_done_callback(lambda _: q.put_nowait(None))
        n, first = 0, 0.0
        while await q.get() is not None:
            n += 1
            first = first or time.perf_counter()
        await done
        return n, first

    async def close(self) -> None:
        self.curl.multi.close()


CLIENTS: dict[str, Callable[[], Client]] = {
    "aiohttp h1": Aiohttp,
    "geogate h1": Geogate,
    "httpx h1": lambda: Httpx(False),
    "httpx h2": lambda: Httpx(True),
    "pyreqwest h1": lambda: Pyreqwest(False),
    "pyreqwest h2": lambda: Pyreqwest(True),
    "rnet h1": lambda: Rnet(False),
    "rnet h2": lambda: Rnet(True),
    "pycurl h1": lambda: Pycurl(False),
    "pycurl h2": lambda: Pycurl(True),
}
