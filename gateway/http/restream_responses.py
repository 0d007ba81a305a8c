"""A whole Responses API answer (``"object": "response"``) as the event stream a stream
request to ``/v1/responses`` gets: gateway.http.restream's conversion for that API.

The events are those OpenAI sends, in its order, each ``event: TYPE`` and its JSON with a
``sequence_number``: the response created and in progress (no output, no usage yet), then
per output item its ``output_item.added`` (a message with no content, a function call with
no arguments, any other item whole), per content part of a message its
``content_part.added`` (empty), its text (or refusal) as one delta and done, and
``content_part.done``; a function call's arguments as one delta and done; the item's
``output_item.done`` (whole); last ``response.completed`` (``incomplete`` or ``failed`` where
the response's status says so) with the whole response. The SDK's ``responses.stream()``
builds the response back from the added items and the deltas, telling items apart by their
ids: an item without one is given ``item_N``.
"""

from __future__ import annotations

import json
from typing import Any, Final

# The last event, by the response's status.
_ENDS: Final = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
# A response's fields that only its end knows.
_KNOWN_AT_THE_END: Final = frozenset({"usage", "error", "incomplete_details", "completed_at"})
# A part as it is added, before its delta: (its type's text field, the part's empty form).
_EMPTY_PARTS: Final = {
    "output_text": ("text", {"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
    "refusal": ("refusal", {"type": "refusal", "refusal": ""}),
}
# The events of a part's text, by that field: its delta, and its done.
_TEXT_EVENTS: Final = {
    "text": ("response.output_text.delta", "response.output_text.done"),
    "refusal": ("response.refusal.delta", "response.refusal.done"),
}


def response_events(doc: dict[str, Any]) -> bytes | None:
    """The event stream of the whole response ``doc``; None where its output is no list of
    items."""
    output = doc.get("output")
    if not isinstance(output, list) or not all(_convertible(item) for item in output):
        return None
    events = _Events()
    # As OpenAI's: what only the end knows is null at the start.
    opened = {**doc, **dict.fromkeys(_KNOWN_AT_THE_END & doc.keys()), "status": "in_progress"}
    opened["output"] = []
    events.add("response.created", response=opened)
    events.add("response.in_progress", response=opened)
    for n, item in enumerate(output):
        _item(events, n, item)
    events.add(_ENDS.get(str(doc.get("status")), "response.completed"), response=doc)
    return events.data()


def _convertible(item: object) -> bool:
    """An item this module can stream: an object, a message's content a list of objects (the
    SDK's stream helper reads each part as one)."""
    if not isinstance(item, dict):
        return False
    content = item.get("content")
    return (
        item.get("type") != "message"
        or not isinstance(content, list)
        or all(isinstance(part, dict) for part in content)
    )


class _Events:
    """The stream's events in order, numbered."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        data = json.dumps({"type": kind, "sequence_number": len(self.parts), **fields})
        self.parts.append(b"event: %b\ndata: %b\n\n" % (kind.encode(), data.encode()))

    def data(self) -> bytes:
        return b"".join(self.parts)


def _item(events: _Events, n: int, item: dict[str, Any]) -> None:
    """One output item's events: added empty, its content or arguments, done whole."""
    if not isinstance(item.get("id"), str):  # the SDK's helper tells items apart by id
        item = {**item, "id": f"item_{n}"}
    kind, item_id = item.get("type"), item["id"]
    empty = {**item, "status": "in_progress"}
    content = item.get("content")
    if kind == "message" and isinstance(content, list):
        empty["content"] = []
    if kind == "function_call":
        empty["arguments"] = ""
    events.add("response.output_item.added", output_index=n, item=empty)
    where = {"output_index": n, "item_id": item_id}
    if kind == "message" and isinstance(content, list):
        for j, part in enumerate(content):
            _part(events, {**where, "content_index": j}, part)
    elif kind == "function_call":
        arguments = item.get("arguments", "")
        events.add("response.function_call_arguments.delta", **where, delta=arguments)
        events.add("response.function_call_arguments.done", **where, arguments=arguments)
    events.add("response.output_item.done", output_index=n, item=item)


def _part(events: _Events, where: dict[str, Any], part: dict[str, Any]) -> None:
    """One content part's events: added empty, its text as one delta and done, done whole."""
    kind = part.get("type")
    if kind not in _EMPTY_PARTS:
        events.add("response.content_part.added", **where, part=part)
    else:
        field, empty = _EMPTY_PARTS[kind]
        text = part.get(field, "")
        delta, done = _TEXT_EVENTS[field]
        # output_text's logprobs ride with its text, as OpenAI's do; refusal has none
        extra = {"logprobs": part.get("logprobs") or []} if field == "text" else {}
        events.add("response.content_part.added", **where, part=empty)
        events.add(delta, **where, delta=text, **extra)
        events.add(done, **where, **{field: text}, **extra)
    events.add("response.content_part.done", **where, part=part)
