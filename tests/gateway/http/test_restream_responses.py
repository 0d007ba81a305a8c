"""A whole Responses API answer as its events: each kind of item and part, the last event by
the response's status, and what is not converted. Through a gateway and the SDK:
tests/gateway/http/test_restream.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.http.restream_responses import response_events

BASE: dict[str, Any] = {"id": "resp_1", "object": "response", "status": "completed", "model": "m"}


def _events(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    data = response_events(doc)
    assert data is not None
    out = []
    for block in data.split(b"\n\n")[:-1]:
        kind, payload = block.split(b"\n")
        assert kind.startswith(b"event: ") and payload.startswith(b"data: ")
        event = json.loads(payload[6:])
        assert event["type"] == kind[7:].decode()
        out.append((event["type"], event))
    assert [e["sequence_number"] for _, e in out] == list(range(len(out)))
    return out


def test_a_message_with_text_and_a_refusal_part() -> None:
    logprobs = [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]
    content = [
        {"type": "output_text", "text": "Hi", "annotations": [], "logprobs": logprobs},
        {"type": "refusal", "refusal": "no"},
    ]
    message = {"id": "m1", "type": "message", "role": "assistant", "content": content}
    events = _events({**BASE, "output": [message]})
    assert [k for k, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    by_kind = dict(events)
    assert by_kind["response.created"]["response"]["output"] == []
    assert by_kind["response.output_item.added"]["item"]["content"] == []  # filled by deltas
    assert by_kind["response.output_text.delta"]["delta"] == "Hi"
    assert by_kind["response.output_text.delta"]["logprobs"] == logprobs
    assert by_kind["response.refusal.done"]["refusal"] == "no"
    assert by_kind["response.refusal.delta"]["item_id"] == "m1"
    assert by_kind["response.output_item.done"]["item"] == message  # whole
    assert by_kind["response.completed"]["response"]["output"] == [message]


def test_a_function_call_and_an_item_with_no_content_of_its_own() -> None:
    call = {"id": "fc", "type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}
    reasoning = {"id": "rs", "type": "reasoning", "summary": []}
    events = _events({**BASE, "output": [reasoning, call]})
    kinds = [k for k, _ in events]
    assert kinds[2:4] == ["response.output_item.added", "response.output_item.done"]  # reasoning
    added = events[4][1]
    assert added["output_index"] == 1 and added["item"]["arguments"] == ""
    assert kinds[5:7] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    assert events[5][1]["delta"] == "{}" and events[6][1]["arguments"] == "{}"


def test_an_unknown_part_is_added_and_done_as_it_is() -> None:
    part = {"type": "output_audio", "data": "..."}
    message = {"id": "m1", "type": "message", "content": [part]}
    events = _events({**BASE, "output": [message]})
    added = [e["part"] for k, e in events if k == "response.content_part.added"]
    assert added == [part]


def test_items_without_an_id_get_one_each_and_the_start_knows_no_usage() -> None:
    # the SDK's stream helper tells items apart by id: two without one were "conflicting"
    items = [{"type": "reasoning", "summary": []}, {"type": "reasoning", "summary": []}]
    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    events = _events({**BASE, "output": items, "usage": usage})
    ids = [e["item"]["id"] for k, e in events if k.startswith("response.output_item.")]
    assert ids == ["item_0", "item_0", "item_1", "item_1"]
    created = events[0][1]["response"]
    assert created["usage"] is None and created["output"] == [] and "error" not in created
    assert events[-1][1]["response"]["usage"] == usage


@pytest.mark.parametrize(
    ("status", "last"),
    [
        ("completed", "response.completed"),
        ("incomplete", "response.incomplete"),
        ("failed", "response.failed"),
        ("in_progress", "response.completed"),
        (None, "response.completed"),
    ],
)
def test_the_last_event_says_how_the_response_ended(status: str | None, last: str) -> None:
    assert _events({**BASE, "status": status, "output": []})[-1][0] == last


@pytest.mark.parametrize(
    "output",
    [None, "x", [1], [{"type": "message"}, None], [{"type": "message", "content": ["x"]}]],
)
def test_an_output_that_is_no_list_of_items_is_not_converted(output: object) -> None:
    assert response_events({**BASE, "output": output}) is None
