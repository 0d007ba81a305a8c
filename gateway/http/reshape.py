"""An upstream's error answer in OpenAI's error shape, where it is not in it already.

The OpenAI SDKs take an error's text from ``{"error": {"message": ...}}`` alone: a plain-text
500, an HTML page or Ollama's ``{"error": "model not found"}`` became "Error code: 500" and
nothing more, so the upstream's reason never reached the code that catches the exception.
Such an answer is rewritten here, status kept, its message kept as the upstream wrote it
(``gateway.client.failures.message_of``: one line, at most REFUSAL_MESSAGE_MAX characters).
One in OpenAI's shape (vLLM's, OpenAI's own, another geogate's) goes on untouched, and so does
one that did not come whole with its head or is compressed: nothing is waited for.
"""

from __future__ import annotations

import json

from gateway.client import Response
from gateway.client.failures import message_of, read_error
from gateway.http.events import SSE_TYPE
from gateway.http.paths import OPENAI_PATHS

_REPLACED = frozenset({b"content-type", b"content-length", b"content-encoding"})
_JSON = (b"content-type", b"application/json")


def openai_shaped(resp: Response, path: str) -> list[tuple[bytes, bytes]]:
    """``resp``'s headers, after its body was put in OpenAI's error shape where it was an
    error answer not in it (``resp``'s body replaced), to a request for one of OpenAI's own
    ``path``s (the rerank and score APIs, and extra_api_paths, have errors of their own)."""
    if resp.status < 400 or path not in OPENAI_PATHS:
        return resp.raw_headers
    if (resp.header(b"content-type") or "").startswith(SSE_TYPE):
        return resp.raw_headers  # an error sent as an event stream: its client reads events
    body = resp.readable_body()
    if body is None:
        return resp.raw_headers
    text, doc = read_error(body)
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return resp.raw_headers  # OpenAI's shape already
    said = message_of(text, doc) or f"the upstream answered HTTP {resp.status} with no message"
    code = doc.get("code") if isinstance(doc, dict) else None
    shaped = {
        "error": {
            "message": said,
            "type": "invalid_request_error" if resp.status < 500 else "upstream_error",
            "param": None,
            "code": code if isinstance(code, str) else f"upstream_http_{resp.status}",
        }
    }
    new = json.dumps(shaped).encode()
    headers = [(n, v) for n, v in resp.raw_headers if n not in _REPLACED]
    headers += [_JSON, (b"content-length", b"%d" % len(new))]
    resp.replace_whole(headers, new)
    return headers
