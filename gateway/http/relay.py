"""An upstream's answer after its first chunk, on to the client, chunk by chunk as it comes.

Two ways. Where the server offers a pipe (gateway.h1 on uvicorn: gateway.http.asgi.PIPE), the
chunks go from the upstream connection's read callback straight to the client's connection:
no task wakes per chunk and no ASGI message is built, and the chunks of one socket read leave
in one write (gateway.client.conn). Elsewhere (granian, hypercorn) the request's task reads
each chunk and hands it to the server's ``send``. Either way a client that cannot keep up
holds the upstream back (reading pauses), never the gateway's memory.

On the pipe, from the first chunk boundary on, a chunked body goes by gateway._splice
(gateway.http.splice) where the client's side is plain TCP (the upstream's may be TLS): the
upstream transport's reads go to a protocol in C that writes to the client's socket, no
Python per chunk. The metric geogate_stream_bodies counts streams by the path they took.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.client import Response
from gateway.http import splice
from gateway.http.asgi import CHUNK, PIPE, ClientPipe, Send
from gateway.http.events import EventFramer
from gateway.http.exchange import Exchange
from gateway.http.watchdog import Watchdog
from gateway.traffic import carries_token

# Called once, when the stream's first token is seen (gateway.traffic.carries_token): the
# dashboard's time to first token.
TokenSeen = Callable[[], None]


async def relay(
    resp: Response,
    send: Send,
    ex: Exchange,
    watchdog: Watchdog,
    token_seen: TokenSeen | None,
    splice_ok: bool = True,
    framer: EventFramer | None = None,
) -> str:
    """The rest of ``resp``'s body to the client, touching ``watchdog`` per chunk, and calling
    ``token_seen`` at the first chunk that carries a token; an event stream's on whole events
    through ``framer`` (gateway.http.events), whose rest the caller sends at the end. Raises
    what the upstream's connection raises (the caller cuts the stream); the final send that
    ends the response is the caller's. Returns the path the body took: "splice" where
    gateway._splice carried it (gateway.http.splice; only with ``splice_ok``, the config's
    server.splice), else "python"."""
    pipe_for: Callable[[], ClientPipe | None] | None = ex.scope.get("extensions", {}).get(PIPE)
    pipe = pipe_for() if pipe_for is not None else None
    if pipe is not None:
        return await _piped(resp, pipe, ex, watchdog, token_seen, splice_ok, framer)
    read = resp.reader()
    sending = False  # a send waits while the client reads nothing: not the upstream's silence
    watchdog.held = lambda: sending
    watchdog.touch()
    while True:
        chunk = await read()
        if not chunk:
            return "python"
        if framer is not None and not (chunk := framer.take(chunk)):
            watchdog.touch()  # half an event came: the upstream is not silent
            continue
        if token_seen is not None and carries_token(chunk):
            token_seen()
            token_seen = None
        ex.body_bytes += len(chunk)  # the access line's count: the proxy's send is the server's
        sending = True
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        sending = False
        watchdog.touch()  # from the send's end: the upstream's silence starts there


async def _piped(
    resp: Response,
    pipe: ClientPipe,
    ex: Exchange,
    watchdog: Watchdog,
    token_seen: TokenSeen | None,
    splice_ok: bool,
    framer: EventFramer | None,
) -> str:
    # Bound once: this runs per streamed token, from the upstream connection's read callback,
    # and each Python call on the way costs (bench/perf_split.py: under load a stream's Python
    # costs several times what the same code costs in a hot loop). One frame: on uvloop the
    # pipe's members are the client transport's own methods, in C.
    write, closing, flow, clock = pipe.write, pipe.is_closing, pipe.flow, watchdog.clock
    # A client whose writes are paused holds the upstream back (the sink's False, the splice's
    # pause): the watchdog does not take that silence for the upstream's.
    watchdog.held = lambda: flow.write_paused

    def sink(chunk: bytes) -> bool:
        nonlocal token_seen
        if closing():
            return False  # the disconnect hook ends this task; nothing is counted as sent
        watchdog.last = clock()  # watchdog.touch(), inline: keep the two the same
        if framer is not None and not (chunk := framer.take(chunk)):
            return not flow.write_paused  # half an event: held (an empty chunk would end it)
        ex.body_bytes += len(chunk)  # the access line's count: what is sent, as the C's
        if token_seen is not None and carries_token(chunk):
            seen()
        write(CHUNK % (len(chunk), chunk))
        return not flow.write_paused

    def seen() -> None:  # from the sink, or from gateway._splice's C: once either way
        nonlocal token_seen
        if token_seen is not None:
            token_seen()
            token_seen = None

    # gateway._splice carries the body where it can (gateway.http.splice): from the chunk
    # boundary the upstream's bytes stand at now, or else from the next one (drain_to returns
    # there). Its C looks for the first token as the sink does.
    spliced = splice_ok and splice.AVAILABLE and resp.splicable()
    if spliced:
        resp.hand_off()
    handed = spliced and resp.handed_off()
    try:
        if not handed:  # the Python sink first, up to the next boundary (or the end)
            pipe.on_writable(resp.resume)
            await resp.drain_to(sink)
            handed = spliced and resp.handed_off()
            if handed:
                pipe.on_writable(None)  # the client's writability is the splice's meanwhile
        if handed:
            on_token = None if token_seen is None else seen
            if await splice.carry(resp, pipe, ex, watchdog, on_token, framer):
                return "splice"
            # Not lent (the client's TLS, bytes still buffered for it, the upstream closing), or
            # the relay could not start: the rest in Python, from the same boundary.
            pipe.on_writable(resp.resume)
            resp.lent_back()
            await resp.drain_to(sink)
    finally:
        pipe.on_writable(None)
    return "python"
