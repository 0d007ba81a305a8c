#!/usr/bin/env python3
"""The whole Python stack per proxied request, in process: gateway.h1's protocol reading the
client's request and writing the answer, geogate's app, gateway.client's pooled connection
writing the upstream request and parsing its answer, and the asyncio machinery between them
(the request's task, its futures and wake-ups), with only the sockets faked. Where
bench/own_path.py prices geogate's own code alone, this prices what Python runs per request or
per stream in all, without the kernel and the VM's noise: the part of bench/ab.py's CPU per
request that is not a system call.

Each of ``--conc`` client connections sends its next request when the last answer has ended;
the upstream's answer comes in pieces, each in a loop turn of its own as a socket's reads
would: the head with the first chunk, then (``--tokens N``) one SSE event per turn, then the
end. ``--floor`` runs bench/floor_proxy.py's ASGI app instead of geogate's.

  .venv/bin/python bench/whole_path.py [--tokens 16] [--floor] [--requests 4000] [--profile]

Prints µs of CPU per request (process time, best of 3 passes after a warm-up).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder comes first on sys.path, and its profile.py would stand in for
# the standard library's, which cProfile imports.
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.own_path import ANSWER, BODY, events  # noqa: E402

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"User-Agent: bench\r\nContent-Length: %d\r\n\r\n"
)
END = b"0\r\n\r\n"
OK_HEAD = b"HTTP/1.1 200 OK"  # the fake upstream's status line


class FakeSocket:
    """The transport side both protocols see: writes collected, reads never paused."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


class Upstream(FakeSocket):
    """An upstream connection's socket: a request written to it is answered, in pieces."""

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop, tokens: int) -> None:
        super().__init__(("127.0.0.1", 9000))
        self.conn, self.loop, self.tokens = conn, loop, tokens

    def write(self, data: bytes) -> None:
        self.writelines((data,))

    def writelines(self, parts: Any) -> None:
        if self.tokens:
            head = OK_HEAD + b"\r\ncontent-type: text/event-stream\r\n"
            head += b"transfer-encoding: chunked\r\n\r\n"
            pieces = [b"%x\r\n%b\r\n" % (len(e), e) for e in events(self.tokens)]
            pieces[0] = head + pieces[0]
            pieces.append(END)
        else:
            head = OK_HEAD + b"\r\ncontent-type: application/json\r\n"
            pieces = [head + b"content-length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER)]
        self.loop.call_soon(self._feed, pieces, 0)

    def _feed(self, pieces: list[bytes], i: int) -> None:
        self.conn.data_received(pieces[i])
        if i + 1 < len(pieces):  # the next read, a loop turn later
            self.loop.call_soon(self._feed, pieces, i + 1)


class Client(FakeSocket):
    """A client connection's socket: when an answer has ended, the next request goes out.
    Anything but a 200 ends the run (``failed``)."""

    def __init__(
        self,
        n: int,
        on_done: Callable[[Client], None],
        failed: Callable[[str], None],
        stream: bool,
    ) -> None:
        super().__init__((f"127.0.0.{n % 250 + 1}", 40000 + n))
        self.on_done, self.failed, self.stream = on_done, failed, stream
        self.got = b""
        self.answers = 0

    def write(self, data: bytes) -> None:
        self.got += data
        head, sep, body = self.got.partition(b"\r\n\r\n")
        if not sep:
            return
        if not head.startswith(b"HTTP/1.1 200"):
            self.failed(f"whole_path: not a 200: {head[:200]!r}")
            return
        if not (body.endswith(END) if self.stream else body == ANSWER):
            return
        self.got = b""
        self.answers += 1
        self.on_done(self)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)


async def _run(args: argparse.Namespace) -> float:
    import uvicorn
    from uvicorn.server import ServerState

    from bench.overhead import gateway_conf
    from gateway import defaults as d
    from gateway.client import conn as client_conn
    from gateway.client import pool
    from gateway.h1 import capped

    loop = asyncio.get_running_loop()
    work = Path(tempfile.mkdtemp(prefix="geogate-whole-path-"))
    if args.floor:
        import os

        import bench.floor_proxy as floor

        os.environ[floor.UPSTREAM_ENV] = "http://127.0.0.1:9000"
        app: Any = floor.asgi
    else:
        from gateway.client import Client as UpstreamClient
        from gateway.config_file import load_config
        from gateway.http import app as app_module
        from gateway.http.app import create_app
        from gateway.runtime import access_log

        app = create_app(load_config(gateway_conf(work, 8000, 9000, "uvicorn")))
        app.proxy.rt.session = UpstreamClient(d.CONNECT_TIMEOUT_S)  # as its lifespan would
        freeze_heap = getattr(app_module, "freeze_heap", None)  # not on trees from before it
        if freeze_heap is not None:
            freeze_heap()
        for handler in access_log.handlers:
            handler.setStream((work / "access.log").open("w"))  # type: ignore[attr-defined]

    async def connect(
        self: Any, loop: asyncio.AbstractEventLoop, origin: Any, timeout_s: float | None
    ) -> Any:
        conn = client_conn.Conn(loop)
        conn.connection_made(Upstream(conn, loop, args.tokens))  # type: ignore[arg-type]
        return conn

    pool.Client._connect = connect  # type: ignore[method-assign]
    # As gateway/server.py runs uvicorn: no proxy-header middleware, no Server header.
    config = uvicorn.Config(
        app, log_config=None, lifespan="off", proxy_headers=False, server_header=False
    )
    config.load()
    state = ServerState()
    proto = capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, d.HEAD_TIMEOUT_S)
    body = json.dumps({**json.loads(BODY), "stream": True}).encode() if args.tokens else BODY
    request = REQUEST % len(body) + body
    left = owed = 0
    done: asyncio.Future[None] = loop.create_future()

    def failed(why: str) -> None:
        if not done.done():
            done.set_exception(SystemExit(why))

    def next_request(sock: Client | None) -> None:
        nonlocal left, owed
        if sock is not None:  # an answer ended
            owed -= 1
            if owed == 0 and not done.done():
                done.set_result(None)
        if left > 0:
            left -= 1
            to = protos[socks.index(sock or socks[left % len(socks)])]
            loop.call_soon(to.data_received, request)

    socks = [Client(i, next_request, failed, bool(args.tokens)) for i in range(args.conc)]
    protos = [proto(config, state, {}, loop) for _ in socks]
    for p, s in zip(protos, socks, strict=True):
        p.connection_made(s)  # type: ignore[arg-type]

    async def batch(n: int) -> float:
        nonlocal left, owed, done
        left, owed, done = n, n, loop.create_future()
        t0 = time.process_time()
        for _ in socks:
            next_request(None)
        await done
        await asyncio.sleep(0)
        return (time.process_time() - t0) / n * 1e6

    await batch(args.requests // 5)
    profile = cProfile.Profile() if args.profile else None
    best = float("inf")
    for _ in range(3):
        if profile is not None:
            profile.enable()
        best = min(best, await batch(args.requests))
        if profile is not None:
            profile.disable()
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile_top)
    answered = sum(s.answers for s in socks)
    expected = args.requests // 5 + 3 * args.requests
    if answered != expected:
        raise SystemExit(f"whole_path: {answered} answers for {expected} requests")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tokens", type=int, default=0, help="stream this many tokens")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4000, help="per pass")
    ap.add_argument("--floor", action="store_true", help="bench/floor_proxy.py's app")
    ap.add_argument("--profile", action="store_true", help="cProfile the passes")
    ap.add_argument("--profile-top", type=int, default=40)
    ap.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")
    args = ap.parse_args()
    import uvloop

    us = uvloop.run(_run(args))
    what = "floor" if args.floor else "geogate"
    result = {"target": what, "tokens": args.tokens, "us_per_request": round(us, 1)}
    print(json.dumps(result))
    if args.out is not None:
        from bench.results_io import params, write_results

        kind = f"a {args.tokens}-token stream" if args.tokens else "a whole answer"
        lines = [
            "# The whole Python stack per request, in process (bench/whole_path.py)",
            "",
            f"{what}, {kind}, c = {args.conc}, best of 3 passes of {args.requests} requests: "
            f"**{us:.1f} µs of CPU per request** (sockets faked).",
        ]
        write_results(args.out, lines, {"params": params(args), **result})


if __name__ == "__main__":
    main()
