"""uvicorn's HTTP/1.1 protocol (httptools) with a cap on a request's head.

httptools keeps whatever URL and headers a client sends until the head ends: a client could
send megabytes of headers into a worker's memory (20 MB were taken and held, measured against
the plain protocol), where granian and nginx refuse with 431. Past ``head_limit`` bytes of URL
and headers this protocol answers 431, in the API's JSON error shape, and closes the
connection. Under the cap the app's own check (``server.max_header_bytes``, the same 431) still
decides: the cap only bounds the memory one connection can take before that check runs.
"""

from __future__ import annotations

import json
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import HeadersTooLarge
from gateway.http.errors import error_body, status_of
from gateway.runtime import log


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, and uvicorn's 400 path runs, which
    ``send_400_response`` below turns into the 431."""


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """Set ``head_limit`` on a subclass (``capped``): uvicorn builds the protocol itself."""

    head_limit: ClassVar[int] = 0
    _head_bytes = 0
    _refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # "k: v\r\n", as the app counts them
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.head_limit:
            self._refused = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        err = HeadersTooLarge(
            f"request line and headers are over {self.head_limit} bytes; send fewer or "
            "shorter headers (the limit is server.max_header_bytes)"
        )
        body = json.dumps(error_body(err)).encode()
        log.warning("refused a request head over %d bytes from %s", self.head_limit, self.client)
        head = (
            f"HTTP/1.1 {status_of(err)} Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def capped(head_limit: int) -> type[CappedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, refusing heads over ``head_limit`` bytes."""
    return type("CappedHttpToolsProtocol", (CappedHttpToolsProtocol,), {"head_limit": head_limit})
