"""The model a request body names, and whether it asks for a stream: what the proxy must
know of a body before it can route it, read without building the rest of it."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from gateway.errors import RequestInvalid


class _ModelAndStream(msgspec.Struct):
    """The two fields the gateway reads; msgspec skips the rest (checking its grammar) instead
    of building it into Python objects: 5-30x cheaper than json.loads from 90 B to 1 MB
    (bench/results/model_of.md)."""

    model: Any = None
    stream: Any = None


_FIELDS = msgspec.json.Decoder(_ModelAndStream)


def model_of(body: bytes) -> tuple[str, bool]:
    """The model the body names, and whether it asks for a stream. Only ``"stream": true``
    is a stream: a backend that took anything else as one is rarer than a long generation
    cut off by the shorter streaming timeout.

    The answer is json.loads' on every body (tests/gateway/http/test_body_model.py holds the two
    side by side): msgspec reads the body when it can; whatever it refuses (invalid JSON, and
    the valid-for-json.loads rest: NaN, a BOM, UTF-16, surrogate escapes) goes to json.loads,
    which gives the answer or the error message. msgspec does not check the UTF-8 of what it
    skips, so a body that is not ASCII is decoded first (json.loads does the same)."""
    try:
        if not body.isascii():  # a C loop, word at a time: most request bodies are ASCII
            body.decode("utf-8")
        fields = _FIELDS.decode(body)
    except (ValueError, RecursionError):  # msgspec.DecodeError and UnicodeDecodeError too
        doc = _parse_whole(body)
        model, stream = doc.get("model"), doc.get("stream")
    else:
        model, stream = fields.model, fields.stream
    if not isinstance(model, str) or not model:
        raise RequestInvalid(_no_model(model), param="model")
    return model, stream is True


def _no_model(model: Any) -> str:
    """Why ``model`` names no model: missing, or there but not a non-empty string (it said
    "no model field" of a body that had one)."""
    if model is None:
        what = 'request body has no "model" field (a non-empty string)'
    elif model == "":
        what = 'request body\'s "model" is empty'
    else:
        what = f'request body\'s "model" must be a non-empty string, not {_json_kind(model)}'
    return f"{what}; name the model to use — GET /v1/models lists them"


def _parse_whole(body: bytes) -> dict[str, Any]:
    """The body as json.loads reads it, or the one-line error that says what is wrong."""
    try:
        doc: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestInvalid(
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f'{exc.colno}); send a JSON object such as {{"model": "...", "messages": [...]}}'
        ) from None
    except UnicodeDecodeError:
        raise RequestInvalid("request body is not UTF-8 text; send JSON encoded as UTF-8") from None
    except RecursionError:  # json.loads recurses once per level: 100,000 "[" exhaust the stack
        raise RequestInvalid(
            "request body is nested too deeply to read; send a JSON object such as "
            '{"model": "...", "messages": [...]}'
        ) from None
    except ValueError:  # an integer of over 4,300 digits (sys.int_info.default_max_str_digits)
        raise RequestInvalid(
            "request body is not valid JSON (a number of over 4300 digits); send shorter numbers"
        ) from None
    if not isinstance(doc, dict):
        raise RequestInvalid(
            f"request body must be a JSON object, not {_json_kind(doc)}; send one such as "
            '{"model": "...", "messages": [...]}'
        )
    return doc


def _json_kind(doc: Any) -> str:
    kinds = {list: "an array", dict: "an object", str: "a string", bool: "true or false"}
    return kinds.get(type(doc), "null" if doc is None else "a number")
