"""The backend's one error root, mapped to OpenAI-shaped JSON at the HTTP boundary."""

from __future__ import annotations

import json
import re
from typing import Any

from backend.shapes import error_body

API_SHOWN_CHARS = 40  # a value an API error quotes, at most: a 300-digit number was quoted whole


def shown(v: Any) -> str:
    """A request's value as an error quotes it: as JSON writes it (true, null, "text"; it was
    Python's True, None, 'text'), and cut short."""
    try:
        text = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # nothing json.loads gives; to be safe
        return f"a {type(v).__name__}"
    if len(text) > API_SHOWN_CHARS:
        text = f"{text[: API_SHOWN_CHARS - 10]}... ({len(text)} characters)"
    return text


# A value echoed in a one-line CLI or config error is cut to this many characters and an
# ellipsis (an API error's, to API_SHOWN_CHARS, by shown): a 100,000-character --who or a
# 5,000-digit override was printed whole (as HostGuard cuts Host).
SHOWN_MAX_CHARS = 100
# What echoes a value: a Python repr in quotes, not right after a letter (the "'" of
# "region's" opens none), or a run of digits (a number is echoed bare).
_ECHOED = re.compile(r"""(?<!\w)('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\d+""")


def clipped(line: str) -> str:
    """``line`` with each value it echoes cut to SHOWN_MAX_CHARS characters and "…", where
    errors are made into lines (a ConfigError, the CLI's output) rather than in each message.
    Idempotent: a cut value is not cut again."""

    def cut(m: re.Match[str]) -> str:
        text = m.group()
        quote = text[0] if m.group(1) else ""
        if len(text) <= SHOWN_MAX_CHARS + 2 * len(quote):  # a cut one: "…" and its quote
            return text
        return f"{text[:SHOWN_MAX_CHARS]}…{quote}"

    return _ECHOED.sub(cut, line)


class BackendError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


class ModelLoadError(BackendError):
    """The model directory or the requested quantization cannot be used (start-up)."""


class InvalidParameter(BackendError):
    status, type, code = 400, "invalid_request_error", "invalid_parameter"


class BodyTooLarge(BackendError):
    status, type, code = 413, "invalid_request_error", "request_too_large"  # as the gateway's


class ContextTooLong(BackendError):
    status, type, code = 400, "invalid_request_error", "context_length_exceeded"


class ModelNotFound(BackendError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class QueueFull(BackendError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class UnsupportedParameter(InvalidParameter):
    """A parameter this server cannot honour; ignoring it would give a wrong answer."""

    code = "unsupported_parameter"  # OpenAI's own, for a parameter a model does not take
