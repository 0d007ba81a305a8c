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


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        # json.loads takes NaN and Infinity; a NaN passes every range check (all compare
        # False) and made the engine's softmax NaN.
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"seed": 2**64}, "seed"),  # torch's manual_seed takes 64 bits, signed or not
        ({"seed": -(2**63) - 1}, "seed"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),  # not "absent": refused
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, "messages"),
    ],
)
def test_invalid_values_are_refused_before_the_engine(
    tok: Any, kw: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidParameter) as e:
        parse(body(**kw), tok, "m", 512, chat=True)
    assert e.value.param == param and param in e.value.message


def test_seed_edges_and_max_completion_tokens_first(tok: Any) -> None:
    for seed in (2**64 - 1, -(2**63)):
        assert parse(body(seed=seed), tok, "m", 512, chat=True).params.seed == seed
    p = parse(body(max_completion_tokens=3, max_tokens=9), tok, "m", 512, chat=True)
    assert p.params.max_tokens == 3


def test_an_empty_prompt_is_refused(tok: Any) -> None:
    # Zero tokens made a float tensor the embedding refused, failing the whole batch.
    with pytest.raises(InvalidParameter) as e:
        parse({"model": "m", "prompt": ""}, tok, "m", 512, chat=False)
    assert e.value.param == "prompt" and "no tokens" in e.value.message


def test_assistant_tool_call_message_with_null_content(tok: Any) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "user", "content": "thanks"},
    ]
    p = parse(body(messages=messages), tok, "m", 512, chat=True)
    assert "<|assistant|>\n</s>" in tok.decode(p.prompt_ids)


def test_a_template_that_refuses_the_messages_is_a_400(
    tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As real templates do for, say, roles that do not alternate.
    monkeypatch.setattr(tok, "chat_template", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidParameter) as e:
        parse(body(), tok, "m", 512, chat=True)
    assert e.value.param == "messages" and "roles must alternate" in e.value.message
