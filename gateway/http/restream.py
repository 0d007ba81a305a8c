"""A whole JSON answer to a stream request, as the event stream the client asked for.

Some upstreams ignore ``"stream": true`` (a server without streaming for a model, an older
adapter, a cache in front of one) and answer the whole completion as JSON. The OpenAI SDKs
read a 200 to a stream request as an event stream whatever its Content-Type: a JSON body is a
stream of no events, so the client got an empty answer and no error, and the completion the
upstream made was lost. The gateway reads such an answer whole (it is one write, as a rule
with its head) and sends it as OpenAI streams one: per choice a chunk with the whole delta,
then one with its finish_reason, a usage chunk when the request asked for one
(``stream_options.include_usage``), then ``[DONE]``. Only for chat and text completions, whose
chunk shapes are OpenAI's; an answer that is not a completion object goes on as it came.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from gateway.client import Response
from gateway.http.events import SSE_TYPE

# The endpoints whose streamed chunks this module writes.
RESTREAMED_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
_JSON_TYPE: Final = re.compile(r"\s*application/json\s*(?:;|$)", re.IGNORECASE)
# What the client's answer needs no longer: the event stream's own are added.
_REPLACED: Final = frozenset({b"content-type", b"content-length", b"content-encoding"})
_EVENTS_HEADERS: Final = ((b"content-type", SSE_TYPE.encode()), (b"cache-control", b"no-cache"))
_DONE: Final = b"data: [DONE]\n\n"
_CHUNK_OBJECT: Final = {
    "chat.completion": "chat.completion.chunk",
    "text_completion": "text_completion",
}
# Fields of a completion that every chunk repeats, as OpenAI's do.
_CHUNK_FIELDS: Final = ("id", "created", "model", "system_fingerprint", "service_tier")


def applies(resp: Response, path: str) -> bool:
    """``resp`` (to a stream request) is a whole answer this module turns into events: a 2xx
    JSON to a chat or text completion, not compressed (its bytes would not be the JSON)."""
    if not 200 <= resp.status < 300 or path not in RESTREAMED_PATHS:
        return False
    # One match and no more for an event stream (what a stream request gets, as a rule).
    ctype = resp.header(b"content-type")
    if ctype is None or _JSON_TYPE.match(ctype) is None:
        return False
    coding = (resp.header(b"content-encoding") or "identity").strip().lower()
    return coding in ("", "identity")


def answer(
    raw: list[tuple[bytes, bytes]], body: bytes, request: bytes
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body to send for the JSON answer ``raw`` and ``body`` to the stream
    request whose body was ``request``: the events, or the answer as it came where it is no
    completion object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not JSON after all (or nested past the parser's
        # depth): the client gets what the upstream said
        return raw, body
    events = as_events(doc, include_usage(request))
    if events is None:
        return raw, body
    headers = [(n, v) for n, v in raw if n not in _REPLACED]
    headers += [*_EVENTS_HEADERS, (b"content-length", b"%d" % len(events))]
    return headers, events


def include_usage(request: bytes) -> bool:
    """The request asked for a usage chunk at the stream's end (OpenAI's stream_options)."""
    try:
        doc = json.loads(request)
    except (ValueError, RecursionError):
        return False
    options = doc.get("stream_options") if isinstance(doc, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def as_events(doc: Any, usage: bool) -> bytes | None:
    """The event stream OpenAI would have sent for the completion ``doc``; None where ``doc``
    is not a chat or text completion with a list of choices."""
    if not isinstance(doc, dict) or doc.get("object") not in _CHUNK_OBJECT:
        return None
    choices = doc.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        return None
    chat = doc["object"] == "chat.completion"
    base = {k: doc[k] for k in _CHUNK_FIELDS if k in doc}
    base["object"] = _CHUNK_OBJECT[doc["object"]]
    chunks: list[dict[str, Any]] = []
    for i, choice in enumerate(choices):
        index = choice.get("index", i)
        if chat:
            pair = _pair(choice, index, "delta", _delta(choice), {})
        else:
            pair = _pair(choice, index, "text", choice.get("text", ""), "")
        chunks += [{**base, "choices": [c]} for c in pair]
    if usage and "usage" in doc:
        chunks.append({**base, "choices": [], "usage": doc["usage"]})
    return b"".join(b"data: %b\n\n" % json.dumps(c).encode() for c in chunks) + _DONE


def _delta(choice: dict[str, Any]) -> dict[str, Any]:
    """A chat choice's whole message as one delta."""
    message = choice.get("message")
    delta = dict(message) if isinstance(message, dict) else {}
    calls = delta.get("tool_calls")
    if isinstance(calls, list):  # a chunk's tool call says its place in the list
        delta["tool_calls"] = [
            {"index": n, **c} if isinstance(c, dict) else c for n, c in enumerate(calls)
        ]
    return delta


def _pair(
    choice: dict[str, Any], index: object, key: str, whole: object, empty: object
) -> list[Any]:
    """A choice's two chunk choices: ``whole`` under ``key`` (a chat's "delta", a text
    completion's "text"), then ``empty`` there with the choice's finish_reason."""
    reason = choice.get("finish_reason")
    return [
        {"index": index, key: whole, "logprobs": choice.get("logprobs"), "finish_reason": None},
        {"index": index, key: empty, "logprobs": None, "finish_reason": reason},
    ]
