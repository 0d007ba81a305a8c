"""Domain errors become HTTP here, and only here: status, OpenAI error type and code.

The table is looked up along each error's class hierarchy, so a new subclass answers like its
parent until it is given a row of its own.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import errors as e
from gateway.defaults import LOOP_STATUS
from gateway.http.asgi import Send, send_json

# class -> (HTTP status, OpenAI error type, code)
HTTP: dict[type[e.GatewayError], tuple[int, str, str]] = {
    e.GatewayError: (500, "server_error", "internal_error"),
    e.OpsUnauthorized: (401, "invalid_request_error", "invalid_ops_token"),
    # RFC 9110 15.5.20: the server is unwilling to answer for that authority.
    e.OpsHostRefused: (421, "invalid_request_error", "ops_host_not_allowed"),
    e.AuthThrottled: (429, "rate_limit_error", "too_many_auth_failures"),
    # RFC 5842: an upstream that leads back here (a gateway listing itself, or two listing
    # each other) would multiply one request until the worker's stream limit.
    e.LoopDetected: (LOOP_STATUS, "server_error", "loop_detected"),
    e.GatewayOverloaded: (503, "service_unavailable", "gateway_at_capacity"),
    e.GatewayShuttingDown: (503, "service_unavailable", "gateway_shutting_down"),
    e.RequestInvalid: (400, "invalid_request_error", "invalid_request"),
    e.BodyTooLarge: (413, "invalid_request_error", "request_too_large"),
    e.UnsupportedEncoding: (415, "invalid_request_error", "unsupported_content_encoding"),
    e.BodyTimeout: (408, "invalid_request_error", "request_timeout"),
    e.HeadTimeout: (408, "invalid_request_error", "request_timeout"),
    e.HeadersTooLarge: (431, "invalid_request_error", "request_headers_too_large"),
    e.UnknownEndpoint: (404, "invalid_request_error", "unknown_url"),
    # RFC 9112 6.1: a transfer coding the server does not know: 501, as nginx answers it.
    e.TransferCodingUnsupported: (501, "invalid_request_error", "unsupported_transfer_coding"),
    e.MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed"),
    # RFC 9110 15.6.2 and 15.6.6: a method the server does not take anywhere (CONNECT: this
    # is no forward proxy), a major version it does not speak; nginx answers both so.
    e.MethodUnsupported: (501, "invalid_request_error", "method_not_supported"),
    e.VersionUnsupported: (505, "invalid_request_error", "http_version_not_supported"),
    e.ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    # 403, as OpenAI answers a client where it does not serve (and its SDKs do not retry it).
    e.ModelNotAllowedHere: (403, "invalid_request_error", "model_not_available_in_region"),
    e.AdminDisabled: (404, "invalid_request_error", "admin_disabled"),
    e.Unauthorized: (401, "invalid_request_error", "invalid_admin_token"),
    e.Forbidden: (403, "invalid_request_error", "csrf_check_failed"),
    e.FleetConfigInvalid: (400, "invalid_request_error", "invalid_request"),
    e.NothingToRestore: (409, "invalid_request_error", "nothing_to_restore"),
    e.SharedStateUnavailable: (503, "service_unavailable", "shared_state_unavailable"),
    e.AuditUnwritable: (503, "service_unavailable", "audit_log_unwritable"),
    e.NoHealthyUpstream: (503, "service_unavailable", "no_healthy_upstream"),
    e.UpstreamBusy: (429, "rate_limit_error", "upstreams_at_capacity"),
    e.UpstreamFailed: (502, "upstream_error", "upstream_failed"),
    e.StreamInterrupted: (502, "upstream_error", "upstream_stream_interrupted"),
    e.UpstreamTimeout: (504, "upstream_error", "upstream_timeout"),
}


def _row(err: e.GatewayError) -> tuple[int, str, str]:
    for cls in type(err).__mro__:
        row = HTTP.get(cls)
        if row is not None:
            return row
    return HTTP[e.GatewayError]


def status_of(err: e.GatewayError) -> int:
    return _row(err)[0]


def error_body(err: e.GatewayError) -> dict[str, Any]:
    _, type_, code = _row(err)
    # "param": the field at fault (the model), else null, as OpenAI's own errors carry it.
    return {"error": {"message": err.message, "type": type_, "param": err.param, "code": code}}


def error_headers(err: e.GatewayError) -> dict[str, str]:
    out = {} if err.retry_after_s is None else {"Retry-After": str(err.retry_after_s)}
    if isinstance(err, e.MethodNotAllowed):
        out["Allow"] = ", ".join(err.allow)  # RFC 9110 §15.5.6: a 405 must say what is allowed
    if isinstance(err, e.UnsupportedEncoding):
        out["Accept-Encoding"] = ", ".join(err.accepted)  # RFC 7694: what a 415 would take
    if isinstance(err, e.LoopDetected):
        out["x-should-retry"] = "false"  # a config's loop: the same again would loop again
    if isinstance(err, e.UpstreamTimeout):
        # The OpenAI SDKs retry a 5xx twice unless told not to: a 504 the gateway chose not to
        # fail over (the work may still run where it timed out) was run three times. The
        # retry policy was applied here; whether to run the work again is the client's call.
        out["x-should-retry"] = "false"
    return out


class JSONAnswer(JSONResponse):
    """Starlette's JSONResponse with everything past ASCII escaped, as ``send_json`` writes:
    Starlette's (``ensure_ascii=False``, then UTF-8) cannot encode a lone surrogate, which
    JSON's ``"\\ud800"`` decodes to, so an error that named a client's key or value answered
    500 with a traceback in the log."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def json_error(err: e.GatewayError) -> JSONAnswer:
    """For Starlette endpoints."""
    return JSONAnswer(error_body(err), status_code=status_of(err), headers=error_headers(err))


async def send_error(
    send: Send, err: e.GatewayError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """For raw ASGI code (the proxy)."""
    headers = [(k.lower().encode(), v.encode()) for k, v in error_headers(err).items()]
    await send_json(send, status_of(err), error_body(err), headers + (extra or []))


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (a wrong method on one of the gateway's endpoints), in the same
    shape as every other error: ``exception_handlers={HTTPException: http_exception}``."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        # Starlette's Allow comes from a set: sorted, it reads the same every time.
        allow = tuple(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",")))
        return json_error(
            e.MethodNotAllowed(f"{where} is not allowed; use {', '.join(allow)}", allow)
        )
    body: dict[str, dict[str, str | None]] = {
        "error": {
            "message": f"{where}: {exc.detail}",
            "type": "invalid_request_error",
            "param": None,
            "code": f"http_{exc.status_code}",
        }
    }
    return JSONAnswer(body, status_code=exc.status_code, headers=exc.headers)
