"""aiohttp's connection protocol with the answers it makes itself in OpenAI's JSON error shape,
for the model server and the simulator.

A request that is not HTTP/1.1 as aiohttp reads it (a bad header or chunk size, a head over
8 KiB, Content-Length beside chunked, an unknown version) never reaches the application or
its middlewares: aiohttp answered it with a plain-text 400 that drew where the parse broke,
and logged a traceback for each, so anyone who reaches the port could fill the log with
them. Here the answer is JSON and the log line is one line (a handler's own exception, a
500, keeps its traceback: that is a bug to read). aiohttp has no setting for this: its
Server builds ``web_server.RequestHandler``, which ``install`` points at this subclass.
"""

from __future__ import annotations

import http
import logging

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_request import BaseRequest

from backend.errors import clipped
from backend.shapes import error_body

log = logging.getLogger("geogate.backend")


class OpenAIErrors(web_protocol.RequestHandler):
    """aiohttp's protocol; its own error answers (400 for a malformed request, 500 for a
    handler's exception, 504 for a handler cut by its timeout) in OpenAI's JSON shape."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == http.HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            said = "internal error in the model server; retry, and report it if it persists"
        else:
            said = one_line(exc.message if isinstance(exc, HttpProcessingError) else message)
            said = clipped(said or http.HTTPStatus(status).phrase)
            # A first request that is no HTTP at all (a TLS hello, a scanner) at debug, as
            # aiohttp has it: the open internet sends those all day.
            noise = self._request_count == 1 and isinstance(exc, BadHttpMethod)
            log.log(
                logging.DEBUG if noise else logging.WARNING,
                "answered a request from %s with HTTP %d: %s",
                request.remote,
                status,
                said,
            )
        if request.writer.output_size > 0:  # as aiohttp's, once said: the answer had begun
            raise ConnectionError("the response had begun: no error answer can follow")
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = http.HTTPStatus(status).phrase.lower().replace(" ", "_")  # "bad_request"
        resp = web.json_response(error_body(said, kind, code), status=status)
        resp.force_close()  # as aiohttp's: the connection's state after the error is unknown
        return resp


def one_line(text: str | None) -> str:
    """aiohttp's parse error on one line: its diagram's pointer line dropped ("Invalid method
    encountered:", the bytes, "^" under where it broke: "... encountered: b'GARBAGE'")."""
    lines = (line.strip() for line in (text or "").splitlines())
    return " ".join(line for line in lines if line and set(line) != {"^"})


def install() -> None:
    """aiohttp's servers in this process build OpenAIErrors for each connection."""
    setattr(web_server, "RequestHandler", OpenAIErrors)  # noqa: B010 (not exported: see above)
