"""The gateway's one error root, and its mapping to OpenAI-shaped JSON at the HTTP boundary."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Anything the gateway reports to a client or an operator.

    ``status``, ``type`` and ``code`` shape the OpenAI error body; ``message`` must say what to
    do about it, since it is all an API client sees.
    """

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class ConfigError(GatewayError):
    """A config file or override is invalid; raised before anything starts."""


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class BadRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class RouteNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "unknown_url"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_admin_token"


class AdminDisabled(GatewayError):
    status, type, code = 404, "invalid_request_error", "admin_disabled"


class SharedStateUnavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "shared_state_unavailable"


class NoHealthyUpstream(GatewayError):
    status, type, code = 503, "service_unavailable", "no_healthy_upstream"


class UpstreamBusy(GatewayError):
    status, type, code = 429, "rate_limit_error", "upstreams_at_capacity"


class UpstreamFailed(GatewayError):
    status, type, code = 502, "upstream_error", "upstream_failed"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "upstream_error", "upstream_timeout"
