from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.api import DEFAULT_MAX_TOKENS, parse
from backend.errors import ContextTooLong, InvalidParameter, ModelNotFound
from backend.shapes import Shape


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_defaults_and_chat_template(tok: Any) -> None:
    p = parse(body(), tok, "m", 512, chat=True)
    assert p.params.max_tokens == DEFAULT_MAX_TOKENS and p.params.temperature == 1.0
    text = tok.decode(p.prompt_ids)
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>\n")
    assert not p.stream


def test_parameters_are_carried(tok: Any) -> None:
    p = parse(
        body(
            max_tokens=5,
            temperature=0,
            top_p=0.5,
            stop="x",
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        ),
        tok,
        "m",
        512,
        chat=True,
    )
    assert (p.params.max_tokens, p.params.temperature, p.params.top_p) == (5, 0.0, 0.5)
    assert (p.params.stop, p.params.seed, p.stream, p.include_usage) == (("x",), 3, True, True)
    c = parse({"model": "m", "prompt": ["abc"]}, tok, "m", 512, chat=False)
    assert tok.decode(c.prompt_ids) == "abc"


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"seed": 1.5}, "seed"),
        ({"temperature": True}, "temperature"),
        ({"stop": [""]}, "stop"),
        ({"stream_options": []}, "stream_options"),
    ],
)
def test_invalid(tok: Any, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        parse(body(**kw), tok, "m", 512, chat=True)
    assert e.value.param == param


def test_model_and_context(tok: Any) -> None:
    with pytest.raises(ModelNotFound):
        parse(body(), tok, "other", 512, chat=True)
    with pytest.raises(ContextTooLong, match="context window is 20 tokens"):
        parse(body(max_tokens=20), tok, "m", 20, chat=True)
    assert parse(body(), tok, "m", 20, chat=True).params.max_tokens < 20  # capped to room


def test_shapes() -> None:
    s = Shape("m", chat=True)
    assert s.chunk(None, None, role=True)["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    assert s.chunk("hi", None)["choices"][0]["delta"] == {"content": "hi"}
    assert s.usage_chunk({"prompt_tokens": 1})["choices"] == []
    whole = Shape("m", chat=False).whole("t", "length", {})
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "t"
