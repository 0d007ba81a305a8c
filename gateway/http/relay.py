"""An upstream's answer after its first chunk, on to the client, chunk by chunk as it comes.

Two ways. Where the server offers a pipe (gateway.h1 on uvicorn: gateway.http.asgi.PIPE), the
chunks go from the upstream connection's read callback straight to the client's connection:
no task wakes per chunk and no ASGI message is built, and the chunks of one socket read leave
in one write (gateway.client.conn). Elsewhere (granian, hypercorn) the request's task reads
each chunk and hands it to the server's ``send``. Either way a client that cannot keep up
holds the upstream back (reading pauses), never the gateway's memory.

On the pipe, once the stream's first token has been seen, the rest of a chunked body over plain
TCP goes by gateway._splice (gateway.http.splice): from socket to socket in C, no Python per
chunk. The metric geogate_stream_bodies counts streams by the path they took.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.client import Response
from gateway.http.asgi import CHUNK, PIPE, ClientPipe, Send
from gateway.http import splice
from gateway.http.exchange import Exchange
from gateway.http.watchdog import Watchdog

# Called with each chunk until it returns True: the stream's first token has been seen.
FirstToken = Callable[[bytes], bool]


async def relay(
    resp: Response,
    send: Send,
    ex: Exchange,
    watchdog: Watchdog,
    first_token: FirstToken | None,
    splice_ok: bool = True,
) -> str:
    """The rest of ``resp``'s body to the client, touching ``watchdog`` per chunk. Raises what
    the upstream's connection raises (the caller cuts the stream); the final empty send that
    ends the response is the caller's. Returns the path the body took: "splice" where
    gateway._splice carried its rest (gateway.http.splice; only with ``splice_ok``, the
    config's server.splice), else "python"."""
    pipe_for: Callable[[], ClientPipe | None] | None = ex.scope.get("extensions", {}).get(PIPE)
    pipe = pipe_for() if pipe_for is not None else None
    if pipe is not None:
        return await _piped(resp, pipe, ex, watchdog, first_token, splice_ok)
    read = resp.reader()
    while True:
        watchdog.touch()
        chunk = await read()
        if not chunk:
            return "python"
        if first_token is not None and first_token(chunk):
            first_token = None
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _piped(
    resp: Response,
    pipe: ClientPipe,
    ex: Exchange,
    watchdog: Watchdog,
    first_token: FirstToken | None,
    splice_ok: bool,
) -> str:
    # Bound once: this runs per streamed token, from the upstream connection's read callback,
    # and each Python call on the way costs (bench/perf_split.py: under load a stream's Python
    # costs several times what the same code costs in a hot loop). One frame: on uvloop the
    # pipe's members are the client transport's own methods, in C.
    write, closing, flow, clock = pipe.write, pipe.is_closing, pipe.flow, watchdog.clock
    # Past the first token the rest may go by gateway._splice (gateway.http.splice): the
    # connection stops at the next chunk boundary and drain_to returns.
    spliced = splice_ok and splice.AVAILABLE and resp.splicable()

    def sink(chunk: bytes) -> bool:
        nonlocal first_token
        if closing():
            return False  # the disconnect hook ends this task; nothing is counted as sent
        watchdog.last = clock()  # watchdog.touch(), inline: keep the two the same
        ex.body_bytes += len(chunk)  # what the proxy's send wrapper counts for the access line
        if first_token is not None and first_token(chunk):
            first_token = None
            if spliced:
                resp.hand_off()
        write(CHUNK % (len(chunk), chunk))
        return not flow.write_paused

    if spliced and first_token is None:
        resp.hand_off()
    pipe.on_writable(resp.resume)
    try:
        await resp.drain_to(sink)
        if resp.handed_off():
            pipe.on_writable(None)  # the client's writability is the splice's meanwhile
            if await splice.carry(resp, pipe, ex, watchdog):
                return "splice"
            pipe.on_writable(resp.resume)
            # Not lent (the client's TLS, bytes still buffered for it), or given back between
            # chunks (the client spoke): the rest in Python.
            resp.lent_back()
            await resp.drain_to(sink)
    finally:
        pipe.on_writable(None)
    return "python"
