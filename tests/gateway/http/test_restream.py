"""An upstream that answers a stream request with the whole completion as JSON: the client
gets the event stream it asked for (the OpenAI SDK read the JSON as a stream of no events,
silently empty), through a real gateway, as the SDK reads it."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from gateway.client import Response
from gateway.http.restream import MAX_BYTES, answer, applies, as_events, include_usage
from tests.support import (
    Gateway,
    answer_whole,
    eventually,
    scripted_gateway,
)

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
CHAT: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Bonjour, le monde"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
TOOLS = {
    **CHAT,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
            "finish_reason": "tool_calls",
        }
    ],
}
TEXT = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1_700_000_000,
    "model": "m",
    "choices": [{"index": 0, "text": " jumps over", "logprobs": None, "finish_reason": "length"}],
    "usage": USAGE,
}
RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "model": "m",
    "output": [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Bonjour", "annotations": []}],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"x": 1}',
            "status": "completed",
        },
    ],
    "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
}
# The model a request names -> the JSON its upstream answers, whatever "stream" said
ANSWERS: dict[str, bytes] = {
    "chat": json.dumps(CHAT).encode(),
    "tools": json.dumps(TOOLS).encode(),
    "text": json.dumps(TEXT).encode(),
    "other": b'{"object": "list", "data": []}',  # no completion: as it came
    "gzip": gzip.compress(json.dumps(CHAT).encode()),
    # an event stream mislabelled as JSON: it streams on as it came
    "resp": json.dumps(RESPONSE).encode(),
    "mislabelled": b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n',
    "two": json.dumps(
        {**CHAT, "choices": [{**CHAT["choices"][0], "index": i} for i in (0, 1)]}
    ).encode(),
}
# A completion past restream.MAX_BYTES, chunked: only its reading tells its size.
BIG = json.dumps({**CHAT, "choices": [{"message": {"content": "x" * MAX_BYTES}}]}).encode()
STALLED = b'{"object": "chat.completion", '  # then nothing, past timeouts.first_byte_s
FIRST_BYTE_S = 3.0  # the other answers come at once: far within it, on a loaded CI host too


class _IgnoresStream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # health probes
        answer_whole(self, 200, b"ok", [("Content-Type", "text/plain")])

    def do_POST(self) -> None:
        model = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["model"]
        headers = [("Content-Type", "application/json; charset=utf-8")]
        if model == "gzip":
            headers.append(("Content-Encoding", "gzip"))
        if model == "stalled":
            self._stall(headers)
            return
        if model == "big":
            self._chunked(headers, BIG)
            return
        answer_whole(self, 200, ANSWERS[model], headers)

    def _chunked(self, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")  # no Content-Length to go by
        self.end_headers()
        for at in range(0, len(body), 65536):
            piece = body[at : at + 65536]
            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _stall(self, headers: list[tuple[str, str]]) -> None:
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(STALLED)
        self.wfile.flush()
        self.connection.settimeout(FIRST_BYTE_S + 10)
        with contextlib.suppress(OSError):  # until the gateway gives up and closes it
            self.rfile.read(1)
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("restream")
    timeouts = f"\n[timeouts]\nfirst_byte_s = {FIRST_BYTE_S}\n"
    models = [*ANSWERS, "stalled", "big"]
    with scripted_gateway(tmp, _IgnoresStream, models, lambda toml: toml + timeouts) as gw:
        yield gw


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def test_a_chat_completion_answered_whole_reaches_a_streaming_client_whole(gw: Gateway) -> None:
    chunks = list(client(gw).chat.completions.create(model="chat", messages=[], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Bonjour, le monde"
    # the role alone first, as OpenAI's streams begin
    assert (chunks[0].choices[0].delta.role, chunks[0].choices[0].delta.content) == (
        "assistant",
        "",
    )
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]
    assert {c.id for c in chunks} == {"chatcmpl-1"} and chunks[0].object == "chat.completion.chunk"
    assert all(c.usage is None for c in chunks)  # not asked for


def test_the_operator_is_told_which_upstream_ignored_stream(gw: Gateway) -> None:
    def counted() -> float:
        text = httpx.get(f"{gw.ops_url}/metrics", timeout=10).text
        found = re.search(
            r'^geogate_stream_answered_whole_total\{upstream="up"\} (\S+)$', text, re.M
        )
        assert found, "the series is there from 0, before its first (increase() sees it)"
        return float(found.group(1))

    before = counted()
    list(client(gw).chat.completions.create(model="chat", messages=[], stream=True))
    assert counted() == before + 1
    # not for an answer that went on as it came
    body = {"model": "other", "messages": [], "stream": True}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
    assert counted() == before + 1
    said = "upstream up answered a stream request with a whole JSON completion (it ignored"
    eventually(lambda: said in gw.log.read_text(), what="the warning in the gateway's log")


def test_the_usage_chunk_comes_when_the_request_asked_for_it(gw: Gateway) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="chat", messages=[], stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12


def test_tool_calls_arrive_with_their_index(gw: Gateway) -> None:
    chunks = list(client(gw).chat.completions.create(model="tools", messages=[], stream=True))
    (call,) = chunks[1].choices[0].delta.tool_calls or []
    assert (call.index, call.id, call.function and call.function.arguments) == (
        0,
        "call_1",
        '{"x": 1}',
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_text_completion_streams_too(gw: Gateway) -> None:
    chunks = list(
        client(gw).completions.create(
            model="text", prompt="the fox", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks[:-1]) == " jumps over"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.total_tokens == 12


def test_each_of_several_choices_is_whole(gw: Gateway) -> None:
    chunks = list(client(gw).chat.completions.create(model="two", messages=[], n=2, stream=True))
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == i]
        assert "".join(c.delta.content or "" for c in mine) == "Bonjour, le monde"
        assert mine[-1].finish_reason == "stop"


def test_an_answer_not_whole_within_first_byte_s_is_a_504_that_says_so(gw: Gateway) -> None:
    body = {"model": "stalled", "messages": [], "stream": True}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=FIRST_BYTE_S + 5)
    assert r.status_code == 504, r.text
    assert (
        f"no whole JSON answer (to send as events) in {FIRST_BYTE_S:g} s"
        in r.json()["error"]["message"]
    )


def test_the_event_stream_is_framed_and_ends_with_done(gw: Gateway) -> None:
    body = {"model": "chat", "messages": [], "stream": True}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert r.headers["x-request-id"] and "content-encoding" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    events = r.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])


@pytest.mark.parametrize("model", ["other", "gzip", "mislabelled"])
def test_what_is_no_plain_completion_goes_on_as_it_came(gw: Gateway, model: str) -> None:
    body = {"model": model, "messages": [], "stream": True}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.content == (gzip.decompress(ANSWERS[model]) if model == "gzip" else ANSWERS[model])


def test_an_answer_found_too_large_to_convert_goes_on_as_it_came(gw: Gateway) -> None:
    # Its size known only once read past the limit: what was read goes on, then the rest
    # (it was a 502, and every upstream ran the generation again).
    body = {"model": "big", "messages": [], "stream": True}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.content == BIG


def test_a_responses_api_answer_reaches_a_streaming_client_as_its_events(gw: Gateway) -> None:
    events = list(client(gw).responses.create(model="resp", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert isinstance(events[-1], ResponseCompletedEvent) and events[-1].response.id == "resp_1"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert deltas == ["Bonjour"]
    # the SDK's helper builds the response back from the items added and the deltas
    with client(gw).responses.stream(model="resp", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Bonjour"
    call = final.output[1]
    assert call.type == "function_call" and call.arguments == '{"x": 1}'


def test_a_request_not_streaming_gets_the_json(gw: Gateway) -> None:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "chat", "messages": []})
    assert r.status_code == 200 and r.json() == CHAT


# --- the conversion itself --------------------------------------------------------------


def _events(data: bytes) -> list[Any]:
    return [json.loads(e[6:]) for e in data.split(b"\n\n")[:-2]]


def test_each_choice_gets_its_delta_then_its_finish_reason() -> None:
    (choice,) = CHAT["choices"]
    two = {**CHAT, "choices": [{**choice, "index": 1}, choice]}
    got = as_events(two, usage=False)
    assert got is not None
    indexes = [(e["choices"][0]["index"], e["choices"][0]["finish_reason"]) for e in _events(got)]
    assert indexes == [(1, None), (1, None), (1, "stop"), (0, None), (0, None), (0, "stop")]


def test_the_role_chunk_has_no_logprobs_and_the_last_keeps_the_choices_own_fields() -> None:
    logprobs = {"content": [{"token": "B", "logprob": -0.1, "top_logprobs": []}]}
    choice = {**CHAT["choices"][0], "logprobs": logprobs, "stop_reason": None}
    got = as_events({**CHAT, "choices": [choice]}, usage=False)
    assert got is not None
    role, content, last = (e["choices"][0] for e in _events(got))
    assert (role["logprobs"], content["logprobs"], last["logprobs"]) == (None, logprobs, None)
    assert "stop_reason" in last and "stop_reason" not in content


def test_a_tool_calls_index_is_its_place_in_the_list() -> None:
    calls = [{**CALL, "index": None}, {**CALL, "id": "call_2"}]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    got = as_events({**TOOLS, "choices": [{"message": message}]}, usage=False)
    assert got is not None
    sent = _events(got)[1]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["id"]) for c in sent] == [(0, "call_1"), (1, "call_2")]


def test_with_usage_asked_every_chunk_has_one_and_a_null_usage_gets_no_chunk() -> None:
    got = as_events({**CHAT, "usage": None}, usage=True)
    assert got is not None
    events = _events(got)
    assert all(e["choices"] and "usage" in e and e["usage"] is None for e in events)


@pytest.mark.parametrize(
    "doc",
    [
        {"object": "chat.completion", "choices": "x"},
        {"object": "chat.completion", "choices": [1]},
        {"object": "embedding"},
        ["chat.completion"],
        None,
    ],
)
def test_what_is_not_a_completion_is_not_converted(doc: Any) -> None:
    assert as_events(doc, usage=True) is None


def test_no_usage_chunk_without_a_usage_to_send() -> None:
    got = as_events({k: v for k, v in CHAT.items() if k != "usage"}, usage=True)
    assert got is not None and all(e["choices"] for e in _events(got))


def test_the_headers_that_describe_the_json_are_not_sent_with_the_events() -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"etag", b'"abc"'),
        (b"cache-control", b"max-age=60"),
        (b"x-upstream", b"kept"),
    ]
    headers, _, events = answer(raw, json.dumps(CHAT).encode(), b"{}")
    assert events
    assert [n for n, _ in headers] == [
        b"x-upstream",
        b"content-type",
        b"cache-control",
        b"content-length",
    ]
    assert dict(headers)[b"cache-control"] == b"no-cache"


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000])
def test_an_answer_that_is_not_json_goes_on_as_it_came(body: bytes) -> None:
    raw = [(b"content-type", b"application/json")]
    assert answer(raw, body, b"{}") == (raw, body, False)


@pytest.mark.parametrize(
    ("request_body", "asked"),
    [
        (b'{"stream_options": {"include_usage": true}}', True),
        (b'{"stream_options": {"include_usage": false}}', False),
        (b'{"stream_options": {"include_usage": 1}}', False),
        (b'{"stream_options": null}', False),
        (b"[]", False),
        (b"\xff", False),
        (b"[" * 100_000, False),  # past the parser's depth
    ],
)
def test_include_usage_reads_the_requests_stream_options(request_body: bytes, asked: bool) -> None:
    assert include_usage(request_body) is asked


@pytest.mark.parametrize(
    ("status", "path", "headers", "converted"),
    [
        (
            200,
            "/v1/chat/completions",
            {b"content-type": "application/json", b"content-length": str(MAX_BYTES + 1)},
            False,
        ),
        (
            200,
            "/v1/chat/completions",
            {b"content-type": "application/json", b"content-length": "x"},
            False,
        ),
        (200, "/v1/chat/completions", {b"content-type": "application/json"}, True),
        (201, "/v1/completions", {b"content-type": "Application/JSON; charset=utf-8"}, True),
        (200, "/v1/chat/completions", {b"content-type": "text/event-stream"}, False),
        (200, "/v1/chat/completions", {b"content-type": "application/jsonl"}, False),
        (200, "/v1/chat/completions", {}, False),
        (400, "/v1/chat/completions", {b"content-type": "application/json"}, False),
        (200, "/v1/responses", {b"content-type": "application/json"}, True),
        (200, "/v1/embeddings", {b"content-type": "application/json"}, False),
        (
            200,
            "/v1/chat/completions",
            {b"content-type": "application/json", b"content-encoding": "br"},
            False,
        ),
        (
            200,
            "/v1/chat/completions",
            {b"content-type": "application/json", b"content-encoding": "Identity"},
            True,
        ),
    ],
)
def test_which_answers_are_turned_into_events(
    status: int, path: str, headers: dict[bytes, str], converted: bool
) -> None:
    first = b' {"object": "chat.completion"'
    resp = cast(Response, SimpleNamespace(status=status, header=headers.get, peek=lambda: first))
    assert applies(resp, path) is converted


@pytest.mark.parametrize(
    ("first", "converted"), [(b"\n{", True), (b"data: {", False), (b"", False)]
)
def test_only_a_body_that_begins_an_object_is_read_whole(first: bytes, converted: bool) -> None:
    headers = {b"content-type": "application/json"}
    resp = cast(Response, SimpleNamespace(status=200, header=headers.get, peek=lambda: first))
    assert applies(resp, "/v1/chat/completions") is converted


def test_the_sdks_stream_helper_rebuilds_the_completion(gw: Gateway) -> None:
    # ChatCompletionStreamState: what client.chat.completions.stream() accumulates
    with client(gw).chat.completions.stream(model="chat", messages=[]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Bonjour, le monde"
    assert final.choices[0].finish_reason == "stop"
    with client(gw).chat.completions.stream(model="tools", messages=[]) as stream:
        message = stream.get_final_completion().choices[0].message
    assert message.content is None  # as the upstream's: null, not ""
    (call,) = message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", '{"x": 1}')
