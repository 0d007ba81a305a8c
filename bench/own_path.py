#!/usr/bin/env python3
"""geogate's own code per proxied request, in process: the app's front door, the stream gate,
the proxy (checks, body, model, GeoIP, routing, metrics, access line) and the upstream attempt,
with the two things that are not geogate's code faked: the ASGI server (a scope and a send that
keeps the status) and the upstream client (an answer at once, no socket). What is left is the
part of a request's CPU that changes when geogate's code changes, without the event loop,
the sockets and the VM's noise around them: steadier than CPU per request under load, so a
before/after pair comes from one sitting. bench/request_path.py is its sibling with the real
upstream client and no gateway.h1 extensions (the body through ``receive()`` under its deadline,
the disconnect watch's timer): its geogate-minus-floor is larger by those fallback paths.

  .venv/bin/python bench/own_path.py --tree now=. --tree start=/tmp/base
      (git archive <commit> | tar -x -C /tmp/base: a tree from before the change)
  .venv/bin/python bench/own_path.py --tokens 16
      (a stream instead: a role chunk, 16 token events and [DONE], piped to the client through
      gateway.h1's pipe extension as on uvicorn)
  .venv/bin/python bench/own_path.py --tokens 16 --requests 1500 --evict 33554432
      (each request after 32 MiB of other memory was copied, timed alone: the request's code
      and data come from memory, not the caches, as under paced load between a stream's
      events, when the host's other processes (the load, the backend) have used the shared
      cache meanwhile)

The scope carries what gateway.h1 adds: the body, the disconnect hook and the pipe. Since round
seven the hook is given in both modes, so a whole answer no longer arms the disconnect watch's
timer (gateway.http.forward, then in gateway.http.upstream): its figure is a few µs under
round six's for the same code (28.6 in bench/results/round7/own_path_whole.md against 35.2
and 36.3 in round six).

Each tree runs in a fresh interpreter with that tree first on sys.path, in rounds that take
turns (the order reversed each round); the median of the rounds' best-of-3 is reported. The
config is bench/overhead.py's default (access log on, to a file; a GeoIP database every lookup
hits). Every request must be answered 200 with the whole answer, or the run fails.
Writes OUT.md and OUT.json (default bench/results/own_path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
).encode()
ANSWER = b'{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"a'
ANSWER += b'ssistant","content":"hello"},"finish_reason":"stop"}],"usage":{"total_tokens":17}}'
# Names in lower case, as gateway.client keeps them (a tree before that lowers them again).
UPSTREAM_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ANSWER)).encode()),
    (b"date", b"Thu, 26 Nov 2026 12:00:00 GMT"),
    (b"server", b"uvicorn"),
]


SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"transfer-encoding", b"chunked"),
    (b"date", b"Thu, 26 Nov 2026 12:00:00 GMT"),
    (b"server", b"uvicorn"),
]
ROLE = b'data: {"id":"cmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
TOKEN = ROLE + b'{"content":"tok "},"finish_reason":null}]}\n\n'
ROLE += b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
DONE = b"data: [DONE]\n\n"


def frame(chunk: bytes) -> bytes:
    """One chunk of a chunked body, as gateway.h1 and the sim backend frame it."""
    return b"%x\r\n%b\r\n" % (len(chunk), chunk)


def bind_loop(rt: Any) -> None:
    """Give geogate's runtime the running loop as its lifespan does (trees from round nine on:
    older runtimes have no ``loop``; the floor has no runtime, None)."""
    if hasattr(rt, "loop"):
        rt.loop, rt.loop_thread = asyncio.get_running_loop(), threading.get_ident()


def request_body(tokens: int) -> bytes:
    """The proxied request: BODY, asking for a stream when ``tokens``."""
    return json.dumps({**json.loads(BODY), "stream": True}).encode() if tokens else BODY


def events(tokens: int) -> list[bytes]:
    """A stream's chunks as a model server sends them: the role, the tokens, [DONE]."""
    return [ROLE] + [TOKEN] * tokens + [DONE] if tokens else [ANSWER]


class FakeResponse:
    """gateway.client.Response as the proxy uses it: a whole answer, already here, or (with
    ``tokens``) an event stream whose chunks drain_to hands on one by one, as the upstream
    connection's read callback does."""

    status = 200

    def __init__(self, tokens: int) -> None:
        self.raw_headers = list(SSE_HEADERS if tokens else UPSTREAM_HEADERS)
        self._chunks = events(tokens)
        self._left = self._chunks[0]
        self._rest = self._chunks[1:]

    async def drain_to(self, sink: Callable[[bytes], bool]) -> None:
        for chunk in self._rest:
            sink(chunk)
        self._rest = []

    def resume(self) -> None:
        return None

    def splicable(self) -> bool:  # no sockets here: the Python relay, whose cost this measures
        return False

    def header(self, name: bytes) -> str | None:  # as gateway.client's: a plain loop
        for n, v in self.raw_headers:
            if n == name:
                return v.decode("latin-1")
        return None

    async def wait_body(self) -> None:
        return None

    async def readany(self) -> bytes:
        body, self._left = self._left, b""
        return body

    def at_eof(self) -> bool:
        return not self._left and not self._rest

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


class FakePipe:
    """gateway.h1's ClientPipe: the framed chunks into a byte count."""

    def __init__(self, seen: dict[str, int]) -> None:
        self.seen = seen
        self.flow = SimpleNamespace(write_paused=False)

    def write(self, framed: bytes) -> None:
        self.seen["bytes"] += int(framed.partition(b"\r\n")[0], 16)  # the chunk's own size

    def is_closing(self) -> bool:
        return False

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        return None


class OldFakePipe:
    """The ClientPipe of trees before 53869d8 (``write`` framed the chunk, ``gone``), so that
    ``--tree`` can still measure them."""

    def __init__(self, seen: dict[str, int]) -> None:
        self.seen = seen

    def write(self, chunk: bytes) -> bool:
        frame(chunk)  # as that pipe framed it, for the cost only: the chunk counts
        self.seen["bytes"] += len(chunk)
        return True

    def gone(self) -> bool:
        return False

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        return None


class FakeClient:
    """gateway.client.Client's request and close: the answer at once, no socket."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def request(
        self,
        method: str,
        url: str,
        headers: Any = (),
        body: bytes = b"",
        reach: Any = None,
        timeout_s: float | None = None,
        until_body: bool = False,
    ) -> FakeResponse:
        if reach is not None:
            reach.connected = True
        return FakeResponse(self.tokens)

    async def close(self) -> None:
        return None


async def _cold(
    app: Any, scope: Callable[[], Any], receive: Any, send: Any, requests: int, evict: int
) -> float:
    """The mean µs of CPU of one request, each after ``evict`` bytes of other memory were read
    and written (out of the caches go the code and data the request touches), each timed alone:
    the mean, not the median, so that work done for many requests at once (an access log
    batch made JSON and written, a garbage collection) counts as it does per request."""
    # Real bytes, not zero pages: a copy of calloc's untouched pages reads one page of zeros.
    filler = (bytes(range(256)) * (evict // 256 + 1))[:evict]
    scratch = bytearray(filler)
    times = []
    for _ in range(requests):
        scratch[:] = filler
        s = scope()
        t0 = time.process_time_ns()
        await app(s, receive, send)
        times.append(time.process_time_ns() - t0)
    return statistics.fmean(times) / 1000


async def _measure(requests: int, tokens: int, evict: int = 0) -> float:
    """µs of CPU per request, best of three passes after a warm-up; with ``evict``, the mean
    over requests each timed alone after ``evict`` bytes of other memory were copied."""
    from bench.overhead import gateway_conf
    from bench.request_path import scope_for
    from gateway.config_file import load_config
    from gateway.http.app import create_app
    from gateway.runtime import access_log

    work = Path(tempfile.mkdtemp(prefix="geogate-own-path-"))
    app: Any = create_app(load_config(gateway_conf(work, 8000, 9000, "uvicorn")))
    app.proxy.rt.session = FakeClient(tokens)  # app.proxy: the stream gate; .rt: its runtime
    bind_loop(app.proxy.rt)
    for handler in access_log.handlers:
        handler.setStream((work / "access.log").open("w"))  # type: ignore[attr-defined]
    seen: dict[str, int] = {"200": 0, "bytes": 0}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen[str(message["status"])] = seen.get(str(message["status"]), 0) + 1
        else:
            seen["bytes"] += len(message.get("body", b""))

    body = request_body(tokens)
    import gateway.http.asgi as asgi  # the tree's: which pipe it asks for

    pipe = (FakePipe if hasattr(asgi, "CHUNK") else OldFakePipe)(seen)

    def hook(_: object) -> None:
        return None

    def scope() -> dict[str, Any]:  # request_path's, with what gateway.h1 adds
        ext = {"geogate.body": lambda: body, "geogate.disconnect": hook}
        return {**scope_for(body, 8000), "extensions": {**ext, "geogate.pipe": lambda: pipe}}

    for _ in range(requests // 10):
        await app(scope(), receive, send)
    if evict:
        best = await _cold(app, scope, receive, send, requests, evict)
        total = requests // 10 + requests
    else:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(requests):
                await app(scope(), receive, send)
            best = min(best, (time.process_time() - t0) / requests * 1e6)
        total = requests // 10 + 3 * requests
    if seen["200"] != total or seen["bytes"] != total * sum(map(len, events(tokens))):
        raise SystemExit(f"own_path: not every request was answered 200 in whole: {seen}")
    return best


def child(tree: Path, requests: int, tokens: int, evict: int = 0) -> None:
    sys.path.insert(0, str(tree))
    import uvloop

    print(json.dumps({"us": uvloop.run(_measure(requests, tokens, evict))}))


def run_tree(tree: Path, requests: int, tokens: int, evict: int = 0) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    cmd += ["--requests", str(requests), "--tokens", str(tokens), "--evict", str(evict)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"own_path: {tree}: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us"])


def caches() -> dict[str, str]:
    """This machine's CPU caches as Linux describes CPU 0's (level and type: size), for the
    record of an ``--evict`` run; empty where /sys does not say."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        found[f"L{level} {kind}"] = size
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--requests", type=int, default=20000, help="per pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--tokens", type=int, default=0, help="stream this many tokens (0: a whole answer)"
    )
    ap.add_argument(
        "--evict",
        type=int,
        default=0,
        help="bytes of other memory copied before each request, each timed alone (0: none)",
    )
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "own_path")
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.requests, args.tokens, args.evict)
        return
    if args.evict < 0:
        ap.error(f"--evict must be 0 or more bytes, not {args.evict}")
    from bench.results_io import write_results
    from bench.turns import parse_trees, take_turns, turns_table

    trees = parse_trees(args.tree or ["now=."])
    per = take_turns(
        trees, args.rounds, lambda _, path: run_tree(path, args.requests, args.tokens, args.evict)
    )
    found = caches()
    if args.evict:
        how = (
            f"{args.requests} requests per round, each after {args.evict} bytes of other memory "
            "were read and written and timed alone (process CPU), the mean request (caches: "
            + (", ".join(f"{k} {v}" for k, v in found.items()) or "not known")
            + ")"
        )
    else:
        how = f"{args.requests} requests per pass, best of 3 passes per round"
    lines = [
        "# geogate's own code per proxied request, in process (bench/own_path.py)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. Server and "
        "upstream client faked; default config (access log to a file, GeoIP hit). "
        f"{how}, {args.rounds} rounds taking turns; the median round.",
        "",
        *turns_table(per, trees, "µs per request"),
    ]
    doc = {
        "requests": args.requests,
        "rounds": args.rounds,
        "evict": args.evict,
        "caches": found,
        "trees": trees,
        "us": per,
    }
    write_results(args.out, lines, doc, trees=trees)


if __name__ == "__main__":
    if "--child" not in sys.argv:
        sys.path.insert(0, str(ROOT))
    main()
