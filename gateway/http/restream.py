"""A whole JSON answer to a stream request, as the event stream the client asked for.

Some upstreams ignore ``"stream": true`` (a server without streaming for a model, an older
adapter, a cache in front of one) and answer the whole completion as JSON. The OpenAI SDKs
read a 200 to a stream request as an event stream whatever its Content-Type: a JSON body is a
stream of no events, so the client got an empty answer and no error, and the completion the
upstream made was lost. The gateway reads such an answer whole (it is one write, as a rule
with its head) and sends it as OpenAI streams one: per chat choice a chunk with the role alone,
one with the rest of the message, one with the finish_reason (a text completion's: its text,
then its finish_reason), a usage chunk when the request asked for one
(``stream_options.include_usage``), then ``[DONE]``; a Responses API response as that API's
events (gateway.http.restream_responses). Only for these, whose streamed shapes are
OpenAI's; an answer that is none of them goes on as it came, and so does one whose body
begins with no ``{`` (an event stream mislabelled as JSON: it streams on).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NamedTuple

from gateway.client import Response
from gateway.http.events import SSE_TYPE
from gateway.http.restream_responses import response_events
from gateway.logs import event, repeating
from gateway.runtime import log

# The endpoints whose streamed chunks this module writes.
RESTREAMED_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
# A larger JSON answer goes on as it came: parsing and writing it again holds the event loop,
# and every other stream of the worker with it (a completion is a few KiB, as a rule).
MAX_BYTES: Final = 4 * 1024 * 1024
_JSON_TYPE: Final = re.compile(r"\s*application/json\s*(?:;|$)", re.IGNORECASE)
# What the client's answer needs no longer: the event stream's own are added, and these
# describe the JSON's bytes (a cache in front of the upstream sets them), not the events'.
_REPLACED: Final = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"cache-control",
        b"etag",
        b"last-modified",
        b"content-md5",
        b"digest",
        b"accept-ranges",
    }
)
_EVENTS_HEADERS: Final = ((b"content-type", SSE_TYPE.encode()), (b"cache-control", b"no-cache"))
_DONE: Final = b"data: [DONE]\n\n"
_CHUNK_OBJECT: Final = {
    "chat.completion": "chat.completion.chunk",
    "text_completion": "text_completion",
}
# Fields of a completion that every chunk repeats, as OpenAI's do.
_CHUNK_FIELDS: Final = ("id", "created", "model", "system_fingerprint", "service_tier")
# A choice's fields its chunks carry in their own places; the others (vLLM's stop_reason) go
# on the chunk with the finish_reason.
_PLACED: Final = frozenset({"index", "message", "text", "logprobs", "finish_reason"})


def applies(resp: Response, path: str) -> bool:
    """``resp`` (to a stream request) is a whole answer this module turns into events: a 2xx
    JSON to a chat or text completion, not compressed (its bytes would not be the JSON), at
    most MAX_BYTES, whose first bytes begin an object."""
    if not 200 <= resp.status < 300 or path not in RESTREAMED_PATHS:
        return False
    # One match and no more for an event stream (what a stream request gets, as a rule).
    ctype = resp.header(b"content-type")
    if ctype is None or _JSON_TYPE.match(ctype) is None:
        return False
    coding = (resp.header(b"content-encoding") or "identity").strip().lower()
    length = resp.header(b"content-length")
    if coding not in ("", "identity"):
        return False
    if length is not None and not (length.strip().isdigit() and int(length) <= MAX_BYTES):
        return False
    return resp.peek().lstrip()[:1] == b"{"


class Whole(NamedTuple):
    """What to send for a whole JSON answer to a stream request: its headers and body, and
    whether they are the events made of it (else the answer as it came)."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    events: bool


def answer(raw: list[tuple[bytes, bytes]], body: bytes, request: bytes) -> Whole:
    """What to send for the JSON answer ``raw`` and ``body`` to the stream request whose body
    was ``request``: the events, or the answer as it came where it is no completion object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not JSON after all (or nested past the parser's
        # depth): the client gets what the upstream said
        return Whole(raw, body, False)
    events = as_events(doc, include_usage(request))
    if events is None:
        return Whole(raw, body, False)
    headers = [(n, v) for n, v in raw if n not in _REPLACED]
    headers += [*_EVENTS_HEADERS, (b"content-length", b"%d" % len(events))]
    return Whole(headers, events, True)


def said(rid: str, upstream: str, region: str) -> None:
    """The warning of an answer sent as events: the upstream's streaming is off or broken,
    which costs its clients every token's latency but the last's (they wait for the whole)."""
    log.warning(
        "request %s: upstream %s answered a stream request with a whole JSON completion (it "
        'ignored "stream": true), sent to the client as events; check its streaming',
        rid,
        upstream,
        extra=repeating(
            "answered-whole",
            {
                **event("stream-answered-whole", upstream=upstream, region=region),
                "http.request.id": rid,
            },
        ),
    )


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
    is not a chat or text completion with a list of choices, or a Responses API response
    (gateway.http.restream_responses). With ``usage``, every chunk has a "usage" (null but in
    the last), as OpenAI's have (a response's events carry its usage whatever was asked)."""
    if isinstance(doc, dict) and doc.get("object") == "response":
        return response_events(doc)
    if not isinstance(doc, dict) or doc.get("object") not in _CHUNK_OBJECT:
        return None
    choices = doc.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        return None
    chat = doc["object"] == "chat.completion"
    base = {k: doc[k] for k in _CHUNK_FIELDS if k in doc}
    base["object"] = _CHUNK_OBJECT[doc["object"]]
    if usage:
        base["usage"] = None
    chunks: list[dict[str, Any]] = []
    for i, choice in enumerate(choices):
        parts = (
            _chat(choice, choice.get("index", i)) if chat else _text(choice, choice.get("index", i))
        )
        chunks += [{**base, "choices": [c]} for c in parts]
    if usage and doc.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": doc["usage"]})
    return b"".join(b"data: %b\n\n" % json.dumps(c).encode() for c in chunks) + _DONE


def _chat(choice: dict[str, Any], index: object) -> list[dict[str, Any]]:
    """A chat choice's chunk choices: the role alone (as OpenAI's first, which carries no
    logprobs: the SDK's stream helper counted a first chunk's twice), the rest of the message
    with the logprobs, then the finish_reason."""
    message = choice.get("message")
    delta = dict(message) if isinstance(message, dict) else {}
    role = delta.pop("role", "assistant")
    # OpenAI's first chunk has the content's type: "" for text, null where there is none (a
    # tool call's), which the SDK's stream helper keeps in the message it rebuilds.
    empty = "" if isinstance(delta.get("content"), str) else None
    calls = delta.get("tool_calls")
    if isinstance(calls, list):  # a chunk's tool call says its place, which is the list's
        delta["tool_calls"] = [
            {**c, "index": n} if isinstance(c, dict) else c for n, c in enumerate(calls)
        ]
    return [
        {
            "index": index,
            "delta": {"role": role, "content": empty},
            "logprobs": None,
            "finish_reason": None,
        },
        {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None},
        _last(choice, index, "delta", {}),
    ]


def _text(choice: dict[str, Any], index: object) -> list[dict[str, Any]]:
    """A text completion's chunk choices: its whole text with the logprobs, then the
    finish_reason."""
    text = choice.get("text", "")
    first = {
        "index": index,
        "text": text,
        "logprobs": choice.get("logprobs"),
        "finish_reason": None,
    }
    return [first, _last(choice, index, "text", "")]


def _last(choice: dict[str, Any], index: object, key: str, empty: object) -> dict[str, Any]:
    """A choice's last chunk choice: ``empty`` under ``key``, the finish_reason, and the
    choice's fields no other chunk placed."""
    extra = {k: v for k, v in choice.items() if k not in _PLACED}
    reason = choice.get("finish_reason")
    return {"index": index, key: empty, "logprobs": None, "finish_reason": reason, **extra}
