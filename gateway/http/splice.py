"""A stream's rest carried by gateway._splice: the upstream's chunked body from its connection
to the client's socket, in C, as the upstream transport's protocol.

gateway.http.relay hands a stream over where the upstream's bytes stand at a chunk boundary,
as a rule right after the first read (the C finds the first token for the dashboard's TTFT
with gateway.traffic.carries_token's test). The upstream's transport gets the C relay as its
protocol, so the event loop's own read callback calls its ``data_received`` (C): per token one
read, one scan of the chunk framing and one send to the client's socket, whose reading is
paused meanwhile, and no Python frame. At the body's end the relay writes the client's last
chunk with the last data (or queues it behind what the client's transport holds), and both
connections are given back as they were: the upstream's parser is fed the last chunk and its
connection goes back to the pool, the client's connection reads again, and the proxy's own
final send completes the response without writing (``ClientPipe.body_ended``).

What stays as with the Python relay: each upstream read leaves as one chunk; a client that
cannot keep up holds the upstream back (past its transport's high-water mark the upstream's
reading pauses until the client's connection is writable again); the watchdog's idle deadline
counts the relay's reads; a failed upstream raises what the Python relay raises
(ConnectionLost, BadResponse), and the client's stream stands at a chunk boundary for the error
event that follows. A client that leaves is seen at a send that fails (a reset fails the next
one, a close the one after), as its connection is lost, or after a silence of
defaults.CLIENT_PROBE_S by the watchdog's probe (``Relay.probe``: its socket asked without
being read). Its reads are paused meanwhile: a pipelined request waits in its socket until the
stream's end, as with nginx. On a TLS upstream, pausing stops the decrypted data, not the
socket's reads: up to uvloop's read size waits decrypted, as on the Python relay. Where the
extension is not built (no C compiler at install), AVAILABLE is False and every stream stays
on the Python relay; ``server.splice = false`` does the same.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from typing import Final

from gateway.client import BadResponse, ConnectionLost, Response
from gateway.http.asgi import ClientPipe
from gateway.http.events import EventFramer
from gateway.http.exchange import Exchange
from gateway.http.watchdog import Watchdog
from gateway.logs import repeating
from gateway.runtime import log

try:
    from gateway import _splice
except ImportError:  # built without a C compiler: pip said so, and the Python relay serves
    _splice = None  # type: ignore[assignment]

AVAILABLE: Final = _splice is not None


async def carry(
    resp: Response,
    pipe: ClientPipe,
    ex: Exchange,
    watchdog: Watchdog,
    token_seen: Callable[[], None] | None,
    framer: EventFramer | None = None,
) -> bool:
    """The body's rest, once ``resp`` was handed off at a chunk boundary. True once the body
    went whole; False when the caller is to go on in Python, from that boundary: either side
    could not be lent. ``token_seen`` is called at the first read that carries a token
    (gateway.traffic.carries_token's test, in C). An event stream's ``framer``: the C holds
    back a partial event as it does (gateway.http.events), from what it holds. Raises
    ConnectionLost or BadResponse as the Python relay does."""
    upstream = resp.lend()
    if upstream is None:
        return False
    client_fd = pipe.lend()
    if client_fd is None:
        return False
    done = watchdog.loop.create_future()
    try:
        relay = _splice.Relay(
            client_fd,
            upstream,
            pipe,
            functools.partial(_set, done),
            token_seen,
            end_body=True,
            sse=framer is not None,
            held=framer.held if framer is not None else b"",
        )
    except Exception as exc:  # no memory: the Python relay goes on
        line = "the stream goes on in Python: the splice could not start (%s)"
        log.warning(line, exc, extra=repeating("splice-start"))
        pipe.give_back()
        return False
    if framer is not None:
        framer.held = b""  # the relay's now: sent with the rest, or dropped at a cut
    own = upstream.get_protocol()
    try:
        upstream.set_protocol(relay)  # type: ignore[arg-type]  # a Protocol in C, duck-typed
        upstream.resume_reading()
        pipe.on_writable(relay.resume)  # also called as the client's connection is lost
        watchdog.watch(relay)  # its reads are the stream's activity; it is probed in a silence
        await done
    finally:
        relay.close()
        pipe.on_writable(None)
        upstream.pause_reading()  # no read reaches the connection's parser before lent_*()
        upstream.set_protocol(own)
        watchdog.watch(None)  # the relay's last read stays counted as activity
        ex.body_bytes += relay.total
        if framer is not None and relay.total:
            framer.open = relay.open_event  # where its last send ended
        status = relay.status
        pipe.give_back()
        if status in _CLIENT_CUT:
            pipe.abort()  # it has gone, or its stream was cut mid-chunk: the hook runs
        failure = _failure(relay)
        if relay.body_ended:
            pipe.body_ended()  # with the last data, in one send: the proxy's final send is empty
        if status in (_splice.END, _splice.END_EXTRA):
            resp.lent_end(extra=status == _splice.END_EXTRA)
        elif failure is not None:
            resp.lent_failed(failure)  # also when cancelled: the upstream is out of step
    if failure is None:
        return True
    if status == _splice.LOCAL_FAILED:
        line = "a stream was cut: the splice failed here (%s)"
        log.warning(line, os.strerror(relay.error), extra=repeating("splice-failed"))
    if status in _CLIENT_CUT:
        await asyncio.sleep(0)  # the hook has cancelled this task: the cancellation lands here
    raise failure


# Ends after which the client's connection is closed: it left, or this side cut its stream
# (possibly mid-chunk), which no upstream is to blame for.
_CLIENT_CUT: Final = frozenset(
    () if _splice is None else (_splice.CLIENT_GONE, _splice.LOCAL_FAILED)
)


def _set(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _failure(relay: _splice.Relay) -> Exception | None:
    status = relay.status
    if status in (_splice.END, _splice.END_EXTRA):
        return None
    if status == _splice.BAD_FRAMING:
        return BadResponse("not HTTP/1.1 chunked framing in the streamed body")
    if status == _splice.UPSTREAM_FAILED:  # worded as the connection's own (gateway.client)
        return ConnectionLost(f"{type(relay.lost).__name__} before the response was complete")
    if status == _splice.UPSTREAM_CLOSED:
        return ConnectionLost("closed by the upstream before the response was complete")
    return ConnectionLost("the stream was cut before the response was complete")
