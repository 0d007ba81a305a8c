"""The proxy's last resort: a bug still gets an OpenAI-shaped answer with the request id.

Driven in-process with a store that fails, since no real component can be made to have a bug
on demand; everything else about the proxy is tested through real processes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.errors import BodyTooLarge, RequestInvalid
from gateway.http.asgi import BODY, Message
from gateway.http.intake import Proxy, model_of, read_body
from gateway.runtime import build_runtime

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
    }
)


async def test_an_unexpected_error_is_a_json_500_naming_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = build_runtime(CFG)

    def broken(now: float) -> Any:
        raise RuntimeError("a bug")

    rt.store.snapshot = broken  # type: ignore[method-assign]
    body = json.dumps({"model": "m"}).encode()
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "scheme": "http",
        "headers": [(b"x-request-id", b"req-7")],
        "client": ("127.0.0.1", 5000),
    }
    await Proxy(rt)(scope, receive, send)
    assert sent[0]["status"] == 500
    err = json.loads(sent[1]["body"])["error"]
    assert "req-7" in err["message"] and err["type"] == "server_error"
    assert "unexpected error in request req-7" in caplog.text


# --- model_of: the fast path gives json.loads' answer on every body --------------------------
#
# The oracle is model_of as it was before the fast path (json.loads on the whole body), copied
# here verbatim so that the comparison outlives it. Bodies are JSON texts built fragment by
# fragment (keys drawn from model/stream/messages and escaped spellings of them, duplicates,
# nested "model" keys, every scalar json.loads reads, NaN and Infinity included, escapes,
# surrogate escapes, odd whitespace), encoded as UTF-8, UTF-8 with a BOM, UTF-16 or UTF-32,
# and then sometimes broken byte by byte, which gives invalid JSON and invalid UTF-8.


def _oracle(body: bytes) -> tuple[str, bool]:
    try:
        doc: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestInvalid(
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f'{exc.colno}); send a JSON object such as {{"model": "...", "messages": [...]}}'
        ) from None
    except UnicodeDecodeError:
        raise RequestInvalid("request body is not UTF-8 text; send JSON encoded as UTF-8") from None
    except RecursionError:
        raise RequestInvalid(
            "request body is nested too deeply to read; send a JSON object such as "
            '{"model": "...", "messages": [...]}'
        ) from None
    if not isinstance(doc, dict):
        kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        raise RequestInvalid(
            f"request body must be a JSON object, not {kinds.get(type(doc), 'a number')}; "
            'send one such as {"model": "...", "messages": [...]}'
        )
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise RequestInvalid(
            'request body has no "model" field (a non-empty string); name the model to use — '
            "GET /v1/models lists them"
        )
    return model, doc.get("stream") is True


def _outcome(fn: Any, body: bytes) -> tuple[str, object]:
    try:
        return "ok", fn(body)
    except RequestInvalid as err:
        return "error", str(err)


_WS = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])
# Mostly other keys, so that many bodies name a model; and the spellings of model and stream
# (escaped, duplicated, nested in messages) that a scan would get wrong.
_KEYS = st.one_of(
    st.sampled_from(['"messages"', '"x"', '"max_tokens"', '""', '"Model"', '"model "']),
    st.text(max_size=5).map(json.dumps),
    st.sampled_from(['"model"', '"stream"', '"mo\\u0064el"', '"\\u006dodel"', '"strea\\u006d"']),
)


def _escaped(text: str, how: list[int]) -> str:
    """``text`` as a JSON string with some characters \\u-escaped and some left raw."""
    out = []
    for i, ch in enumerate(text):
        if ch in '"\\' or ch < " " or (how[i % len(how)] == 1 and ord(ch) >= 128):
            out.append(json.dumps(ch)[1:-1])  # astral characters as a surrogate pair
        elif how[i % len(how)] == 1:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_PLAIN_STRINGS = st.builds(
    _escaped, st.text(max_size=12), st.lists(st.integers(0, 1), min_size=1, max_size=4)
)
# What json.loads reads and stricter parsers refuse, rarer than the rest so that most bodies
# still take the fast path: NaN and infinities, a float that overflows, surrogate escapes.
_ODD = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"']
)
_STRINGS = st.one_of(*[_PLAIN_STRINGS] * 9, _ODD)
_SCALARS = st.one_of(
    *[st.sampled_from(["null", "true", "false", "-0"])] * 3,
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    *[_PLAIN_STRINGS] * 3,
    _ODD,
)
# Not JSON, each in its own way (grammar, escapes, whitespace json.loads does not allow).
_JUNK = st.sampled_from(
    [
        "01",
        "1.",
        ".5",
        "+1",
        "True",
        "tru",
        '"\\q"',
        '"a\\u12G4"',
        "\x0b",
        "\u00a0",
        ",",
        "]",
        "\x00",
    ]
)


def _join(opening: str, items: list[str], closing: str, ws: str) -> str:
    return opening + ws + ("," + ws).join(items) + ws + closing


def _members(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.builds(lambda k, w, v: f"{k}{w}:{w}{v}", _KEYS, _WS, values)
    return st.builds(_join, st.just("{"), st.lists(pair, max_size=5), st.just("}"), _WS)


_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.builds(_join, st.just("["), st.lists(inner, max_size=4), st.just("]"), _WS)
        | _members(inner)
    ),
    max_leaves=20,
)


@st.composite
def _bodies(draw: st.DrawFn, broken: bool = True) -> bytes:
    """Mostly objects naming a model somewhere among other members (valid JSON), some other
    JSON values, and some broken by a token that is not JSON or by bytes changed."""
    members = draw(st.lists(st.builds(lambda k, v: f"{k}: {v}", _KEYS, _VALUES), max_size=5))
    pick = draw(st.sampled_from(["named"] * 4 + ["string", "other", "none"]))
    if pick != "none":
        name = draw(
            st.sampled_from(['"m"', '"gpt-4o"', '"\\u0067pt"', '"\u00e9t\u00e9"'])
            if pick == "named"
            else _STRINGS
            if pick == "string"
            else st.sampled_from(["1", "null", '""', "[]", '{"model": "m"}'])
        )
        members.insert(draw(st.integers(0, len(members))), f'"model": {name}')
    if draw(st.booleans()):
        stream = draw(st.sampled_from(["true", "false"]) | _SCALARS)
        members.insert(draw(st.integers(0, len(members))), f'"stream": {stream}')
    doc = _join("{", members, "}", draw(_WS)) if draw(st.integers(0, 4)) else draw(_VALUES)
    text = draw(_WS) + doc + draw(_WS)
    way = draw(st.sampled_from(["valid"] * 4 + ["junk", "bytes"])) if broken else "valid"
    if way == "junk":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(_JUNK) + text[i:]
    others = ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"] if broken else []
    encoding = draw(st.sampled_from(["utf-8"] * 12 + others))
    body = text.encode(encoding)
    for _ in range(draw(st.integers(1, 3)) if way == "bytes" else 0):
        i = draw(st.integers(0, len(body)))
        byte = bytes([draw(st.integers(0, 255))])
        inserted, deleted = body[:i] + byte + body[i:], body[:i] + body[i + 1 :]
        replaced, truncated = body[:i] + byte + body[i + 1 :], body[:i]
        body = draw(st.sampled_from([inserted, deleted, replaced, truncated]))
    return body


@settings(max_examples=500, deadline=None)
@given(_bodies(broken=False))
def test_model_of_answers_as_json_loads_does_on_json_bodies(body: bytes) -> None:
    assert _outcome(model_of, body) == _outcome(_oracle, body)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_bodies(), _bodies(), _bodies(), st.binary(max_size=64)))
@example(b'{"model": "a", "model": "b", "stream": true, "stream": false}')
@example(b'{"mo\\u0064el": "m", "str\\u0065am": true}')
@example(b'{"messages": [{"model": "inner", "stream": true}], "model": "outer"}')
@example(b'{"messages": [{"model": "inner"}]}')
@example(b'\xef\xbb\xbf{"model": "m"}')
@example('{"model": "m", "stream": true}'.encode("utf-16"))
@example(b'{"model": "m", "x": "\xff"}')
@example(b'{"model": "m", "x": "\xed\xa0\x80"}')  # an encoded surrogate: json.loads allows it
@example(b'{"model": "m", "x": "\xc0\xaf"}')  # overlong UTF-8
@example(b'{"model": "\\ud800"}')
@example(b'{"model": "m", "x": NaN}')
@example(b'{"model": "m"} x')
@example(b"")
def test_model_of_answers_as_json_loads_does(body: bytes) -> None:
    assert _outcome(model_of, body) == _outcome(_oracle, body)


@pytest.mark.parametrize("depth", [10, 500, 900, 950, 980, 990, 1000, 1010, 1100, 5000, 100_000])
def test_model_of_on_deep_nesting_answers_or_says_too_deep(depth: int) -> None:
    body = b'{"x": ' + b"[" * depth + b"]" * depth + b', "model": "m", "stream": true}'
    got, want = _outcome(model_of, body), _outcome(_oracle, body)
    if got != want:  # where json.loads runs out of stack, a parser with room may answer
        assert "nested too deeply" in str(want[1]) and got == ("ok", ("m", True))
    unclosed = b"[" * depth
    assert _outcome(model_of, unclosed) == _outcome(_oracle, unclosed)


def test_model_of_refuses_an_over_long_number_in_one_line() -> None:
    # json.loads refuses integers of over 4,300 digits with a ValueError that was no
    # RequestInvalid (a 500); a body the fast path cannot read falls back to json.loads.
    body = b'\xef\xbb\xbf{"model": "m", "n": 1' + b"0" * 5000 + b"}"
    with pytest.raises(RequestInvalid, match=r"not valid JSON \(a number of over 4300 digits\)"):
        model_of(body)


async def test_a_body_the_server_already_holds_is_taken_without_receive() -> None:
    """gateway.http.asgi.BODY (gateway.h1): no receive(), no deadline; the limit still holds."""

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive() is not called when the server hands the body over")

    def scope(body: bytes) -> dict[str, Any]:
        return {"headers": [], "extensions": {BODY: lambda: body}}

    assert await read_body(scope(b'{"model": "m"}'), receive, 100, 5.0) == b'{"model": "m"}'
    with pytest.raises(BodyTooLarge, match="request body is 101 bytes, over"):
        await read_body(scope(b" " * 101), receive, 100, 5.0)


async def test_a_content_length_int_cannot_read_is_not_taken_for_a_size() -> None:
    # "²" is a digit to str.isdigit and not to int(): not a 500, the body is read as it comes,
    # and its real size is what the limit holds to.
    scope = {"headers": [(b"content-length", b"\xc2\xb2")], "extensions": {BODY: lambda: b"{}"}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("the server holds the body")

    assert await read_body(scope, receive, 100, 5.0) == b"{}"


@pytest.mark.parametrize("declared", [b"9" * 19, b"1" + b"0" * 18, b"9" * 5000])
async def test_a_content_length_of_more_digits_than_a_count_is_too_large_at_once(
    declared: bytes,
) -> None:
    # Over 18 digits is over any limit: a 413 before any of the body is waited for (a
    # 19-digit length was once waited on until the body timeout), and no int() of 5,000 digits.
    scope = {"headers": [(b"content-length", declared)]}

    async def receive() -> dict[str, Any]:
        raise AssertionError("refused before the body")

    with pytest.raises(BodyTooLarge, match="over"):
        await read_body(scope, receive, 100, 5.0)
