"""Small ASGI-level helpers shared by the proxy and the app's own endpoints."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
CONTENT_LENGTH = b"content-length"
# A request's headers the proxy reads, each name's values in order (gateway.http.intake's
# read_heads): gateway.http.body reads the Content-Length from them.
Heads = dict[bytes, list[str]]
# ``heads.get(name, NO_VALUE)[0]``: a header's first value, or None, without a Python call
# per header looked up (four per request).
NO_VALUE: tuple[None] = (None,)


# Where the proxy's ``recorded`` keeps a request's id in its scope, for the endpoint it wraps
# to answer with the access line's (gateway.http.intake).
REQUEST_ID_KEY = "geogate.request_id"
# An ASGI extension of the gateway's own HTTP/1.1 protocol (gateway.h1), in
# scope["extensions"]: ``hook(callback)`` has ``callback()`` called once if the client's
# connection is lost (at once if it already is), ``hook(None)`` cancels it. What the proxy
# uses, where the server offers it, instead of a task waiting on ``receive()`` per request:
# that task, its future and its frames lived as long as each open stream (bench/stream_memory.py
# lists what a stream holds, by line).
DISCONNECT_HOOK = "geogate.disconnect"
DisconnectHook = Callable[[Callable[[], None] | None], None]
# Another: once a response has started with chunked framing, ``scope["extensions"][PIPE]()``
# is a ClientPipe: the client connection's own write, so a streamed chunk can go from the
# upstream's socket callback to the client's socket without waking the request's task or
# passing through the server's send (None when the response cannot be piped). The response
# still ends with the server's own ``more_body: False`` send.
PIPE = "geogate.pipe"
# And: ``scope["extensions"][BODY]()`` is the request's whole body when the server already
# holds all of it and none of it was received yet, else None (then ``receive()`` as usual).
# A proxied request's body is nearly always in by the time its task runs: taking it here
# spares the proxy a ``receive()`` and the body deadline's timer (gateway.http.intake).
BODY = "geogate.body"
WholeBody = Callable[[], bytes | None]


# One chunk of a chunked body as it goes on the wire: ``CHUNK % (len(data), data)``.
CHUNK = b"%x\r\n%b\r\n"


class PipeFlow(Protocol):
    @property
    def write_paused(self) -> bool:
        """The client's buffer is over its high-water mark: write no more until writable."""
        ...


class ClientPipe(Protocol):
    """Bound callables and a flag, not methods of a wrapper: a streamed token passes here, and
    under load each Python call on its way costs several times what it does in a hot loop
    (bench/perf_split.py). ``write`` and ``is_closing`` are the connection's transport's own:
    what ``write`` gets goes on the wire as it is, so each chunk is framed by the caller
    (CHUNK, never for b"": that frame would end the body); ``is_closing()``: the client is
    gone, write nothing."""

    @property
    def write(self) -> Callable[[bytes], object]: ...
    @property
    def is_closing(self) -> Callable[[], bool]: ...
    @property
    def buffered(self) -> Callable[[], int]:
        """The transport's get_write_buffer_size: bytes it holds for the client, unsent."""
        ...

    @property
    def flow(self) -> PipeFlow: ...

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback()`` called when the client's buffer drains (None: no longer)."""
        ...

    def lend(self) -> int | None:
        """The client socket's descriptor, for gateway._splice to write the body's rest
        (gateway.http.splice), with the connection's reading paused till ``give_back()``;
        None where it cannot be lent: TLS, bytes still buffered to go out, the client gone.
        While lent, what the socket cannot take goes to ``write`` (and then all that follows,
        till ``buffered()`` is 0 again)."""
        ...

    def give_back(self) -> None:
        """The splice ended: the connection reads again (a lost client is noticed)."""
        ...

    def abort(self) -> None:
        """Close the client's connection now (a splice left it in the middle of a chunk, or
        found it gone): the request's disconnect hook fires."""
        ...

    def body_ended(self) -> None:
        """The splice wrote the body's last chunk (with its last data, in one send, or queued
        behind what the transport holds): the response's final send writes nothing, and any
        body part sent after it is dropped and the connection closed."""
        ...


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [JSON_TYPE, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
