"""model_of: the fast path (msgspec, skipping what it need not build) gives json.loads' answer
on every body, errors and all.

The oracle is model_of as it was before the fast path (json.loads on the whole body), copied
here so that the comparison outlives it (its message for a "model" that is there but not a
non-empty string has since said so, where it said there was no such field). Bodies are JSON
texts built fragment by fragment (keys drawn from model/stream/messages and escaped spellings
of them, duplicates, nested "model" keys, every scalar json.loads reads, NaN and Infinity
included, escapes, surrogate escapes, odd whitespace), encoded as UTF-8, UTF-8 with a BOM,
UTF-16 or UTF-32, and then sometimes broken byte by byte, which gives invalid JSON and
invalid UTF-8.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import RequestInvalid
from gateway.http.body_model import model_of


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
        if model is None:
            what = 'request body has no "model" field (a non-empty string)'
        elif model == "":
            what = 'request body\'s "model" is empty'
        else:
            kinds = {list: "an array", dict: "an object", str: "a string", bool: "true or false"}
            kind = kinds.get(type(model), "a number")
            what = f'request body\'s "model" must be a non-empty string, not {kind}'
        raise RequestInvalid(f"{what}; name the model to use — GET /v1/models lists them")
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


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"messages": []}', 'has no "model" field'),
        (b'{"model": null}', 'has no "model" field'),
        (b'{"model": ""}', '"model" is empty'),
        (b'{"model": 5}', '"model" must be a non-empty string, not a number'),
        (b'{"model": ["m"]}', '"model" must be a non-empty string, not an array'),
        (b'{"model": {"id": "m"}}', '"model" must be a non-empty string, not an object'),
        (b'{"model": true}', '"model" must be a non-empty string, not true or false'),
    ],
)
def test_a_model_that_is_no_name_is_said_as_it_is(body: bytes, said: str) -> None:
    # {"model": 5} was told it had no "model" field.
    with pytest.raises(RequestInvalid, match=said) as err:
        model_of(body)
    assert err.value.param == "model" and "GET /v1/models lists them" in err.value.message
