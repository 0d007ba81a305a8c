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
end. ``--floor`` runs bench/floor_proxy.py's ASGI app instead of geogate's. Each stack runs as
its server runs it after start-up: geogate with its start-up heap frozen (its lifespan's
``freeze_heap``, where the tree has it), the floor with no start-up of its own. Every answer
must come whole (the stream's every event, framed, and its last chunk) or the run fails.

  .venv/bin/python bench/whole_path.py [--tokens 16] [--floor] [--requests 4000] [--profile]
  .venv/bin/python bench/whole_path.py --tokens 16 --tree now=. --tree before=/tmp/before
      (this script on each tree's code in a fresh interpreter, rounds taking turns; the child
      takes the bench fixtures from that tree too, so a tree needs bench/own_path.py's
      fixtures: `git worktree add /tmp/before <commit>` of c29946b or later)

Prints µs of CPU per request (process time, best of 3 passes after a warm-up; with --tree, each
round's). The fake sockets' own Python is in the figure, the same for every target: about
12 µs per 16-token stream here (building the pieces, checking the client's bytes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The code measured: this tree, or (--tree, in a child) another one. Run as a script, this
# folder comes first on sys.path, and its profile.py would stand in for the standard
# library's, which cProfile imports: the tree's root takes its place.
CODE_ENV = "WHOLE_PATH_CODE"
sys.path[0] = os.environ.get(CODE_ENV, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.own_path import ANSWER, bind_loop, events, frame, request_body  # noqa: E402
from bench.turns import parse_trees, take_turns, turns_table  # noqa: E402

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"User-Agent: bench\r\nContent-Length: %d\r\n\r\n"
)
END = b"0\r\n\r\n"
OK_HEAD = b"HTTP/1.1 200 OK"  # the fake upstream's status line
RUN_TIMEOUT_S = 120  # a pass that has not ended by then is stuck: an answer never completed


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
            pieces = [frame(e) for e in events(self.tokens)]
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
    An answer must be a 200 whose body is exactly ``expected`` (for a stream: every event,
    framed, and the last chunk); anything else, or the gateway closing the connection, ends the
    run (``failed``)."""

    def __init__(
        self,
        n: int,
        on_done: Callable[[Client], None],
        failed: Callable[[str], None],
        expected: bytes,
    ) -> None:
        super().__init__((f"127.0.0.{n % 250 + 1}", 40000 + n))
        self.on_done, self.failed, self.expected = on_done, failed, expected
        self.parts: list[bytes] = []  # this answer's writes, kept until it is whole
        self.size = 0
        self.answers = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size < len(self.expected) and not data.endswith(END):
            return  # cheap while the answer is still coming
        got = b"".join(self.parts)
        head, sep, body = got.partition(b"\r\n\r\n")
        if not sep:
            return
        if not head.startswith(b"HTTP/1.1 200"):
            self.failed(f"whole_path: not a 200: {head[:200]!r}")
        elif body == self.expected:
            self.parts, self.size = [], 0
            self.answers += 1
            self.on_done(self)
        elif len(body) >= len(self.expected) or body.endswith(END):  # ended, or too long
            self.failed(f"whole_path: not the whole answer: {body[-200:]!r}")

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        super().close()
        self.failed("whole_path: the gateway closed a client connection")

    def abort(self) -> None:
        self.close()


def _app(args: argparse.Namespace, work: Path) -> Any:
    """The ASGI app as its server would run it after start-up: geogate's (its upstream client
    made and, on trees that have it, the start-up heap frozen, as its lifespan does), or the
    floor's, which has no start-up of its own."""
    from bench.overhead import gateway_conf
    from gateway import defaults as d

    if args.floor:
        import bench.floor_proxy as floor

        os.environ[floor.UPSTREAM_ENV] = "http://127.0.0.1:9000"
        return floor.asgi
    from gateway.client import Client as UpstreamClient
    from gateway.config_file import load_config
    from gateway.http import app as app_module
    from gateway.runtime import access_log

    # Any: the app of whichever tree is measured; this tree's is a GatewayApp (.proxy).
    app: Any = app_module.create_app(load_config(gateway_conf(work, 8000, 9000, "uvicorn")))
    app.proxy.rt.session = UpstreamClient(d.CONNECT_TIMEOUT_S)
    freeze_heap = getattr(app_module, "freeze_heap", None)  # not on trees from before it
    if freeze_heap is not None:
        freeze_heap()
    for handler in access_log.handlers:
        handler.setStream((work / "access.log").open("w"))  # type: ignore[attr-defined]
    return app


def _fake_upstreams(tokens: int) -> None:
    """gateway.client connects to an Upstream fake instead of a socket."""
    from gateway.client import conn as client_conn
    from gateway.client import pool

    async def connect(
        self: Any, loop: asyncio.AbstractEventLoop, origin: Any, timeout_s: float | None
    ) -> Any:
        conn = client_conn.Conn(loop)
        conn.connection_made(Upstream(conn, loop, tokens))  # type: ignore[arg-type]
        return conn

    pool.Client._connect = connect  # type: ignore[method-assign]


def _expected(tokens: int) -> bytes:
    if not tokens:
        return ANSWER
    return b"".join(map(frame, events(tokens))) + END


async def _run(args: argparse.Namespace, app: Any) -> float:
    import uvicorn
    from uvicorn.server import ServerState

    from gateway import defaults as d
    from gateway.h1 import capped

    loop = asyncio.get_running_loop()
    bind_loop(getattr(getattr(app, "proxy", None), "rt", None))  # the floor has no runtime
    _fake_upstreams(args.tokens)
    # As gateway/server.py runs uvicorn: no proxy-header middleware, no Server header.
    config = uvicorn.Config(
        app, log_config=None, lifespan="off", proxy_headers=False, server_header=False
    )
    config.load()
    proto = capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, d.HEAD_TIMEOUT_S, d.MAX_BODY_BYTES)
    body = request_body(args.tokens)
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

    expected = _expected(args.tokens)
    socks = [Client(i, next_request, failed, expected) for i in range(args.conc)]
    protos = [proto(config, ServerState(), {}, loop) for _ in socks]
    for p, s in zip(protos, socks, strict=True):
        p.connection_made(s)  # type: ignore[arg-type]

    async def batch(n: int) -> float:
        nonlocal left, owed, done
        left, owed, done = n, n, loop.create_future()
        t0 = time.process_time()
        for _ in socks:
            next_request(None)
        await asyncio.wait_for(done, RUN_TIMEOUT_S)
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
    return best


def _one(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="geogate-whole-path-") as tmp:
        app = _app(args, Path(tmp))
        us = uvloop.run(_run(args, app))
    what = "floor" if args.floor else "geogate"
    return {"target": what, "tokens": args.tokens, "us_per_request": round(us, 1)}


def _in_tree(args: argparse.Namespace, name: str, tree: Path) -> float:
    """This script on ``tree``'s code (its gateway and bench packages) in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--tokens", str(args.tokens)]
    cmd += ["--requests", str(args.requests), "--conc", str(args.conc)]
    cmd += ["--floor"] if args.floor else []
    env = {**os.environ, CODE_ENV: str(tree)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"whole_path: {name}: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_request"])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tokens", type=int, default=0, help="stream this many tokens")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4000, help="per pass")
    ap.add_argument("--floor", action="store_true", help="bench/floor_proxy.py's app")
    ap.add_argument(
        "--tree", action="append", default=[], help="NAME=PATH of a source tree (repeatable)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --tree")
    ap.add_argument("--profile", action="store_true", help="cProfile the passes")
    ap.add_argument("--profile-top", type=int, default=40)
    ap.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")
    args = ap.parse_args()
    what = "floor" if args.floor else "geogate"
    kind = f"a {args.tokens}-token stream" if args.tokens else "a whole answer"
    head = [
        "# The whole Python stack per request, in process (bench/whole_path.py)",
        "",
        f"{what}, {kind}, c = {args.conc}, best of 3 passes of {args.requests} requests, "
        "sockets faked.",
        "",
    ]
    trees = parse_trees(args.tree)
    if trees:
        per = take_turns(trees, args.rounds, lambda name, tree: _in_tree(args, name, tree))
        lines = [*head, *turns_table(per, trees, "µs per request")]
        doc: dict[str, Any] = {"trees": trees, "us": per}
        print(json.dumps(doc))
    else:
        doc = _one(args)
        print(json.dumps(doc))
        lines = [*head, f"**{doc['us_per_request']:.1f} µs of CPU per request**."]
    if args.out is not None:
        from bench.results_io import params, write_results

        write_results(args.out, lines, {"params": params(args), **doc}, trees=trees)


if __name__ == "__main__":
    main()
