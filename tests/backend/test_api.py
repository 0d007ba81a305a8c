from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.api import MAX_CHARS_PER_TOKEN, check, parse
from backend.errors import (
    ContextTooLong,
    InvalidParameter,
    ModelNotFound,
    UnsupportedParameter,
)
from backend.shapes import Shape


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_defaults_and_chat_template(tok: Any) -> None:
    p = parse(body(), tok, "m", 512, chat=True)
    # No max_tokens: what the context window leaves (vLLM's default), not a fixed 256.
    assert p.params.max_tokens == 512 - len(p.prompt_ids) and p.params.temperature == 1.0
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


@pytest.mark.parametrize(
    "kw",
    [
        {"stream_options": {"include_usage": True}},  # OpenAI: only with stream true
        {"stream": False, "stream_options": {}},
        {"stream": True, "stream_options": {"include_usage": "false"}},  # read as true
        {"stream": True, "stream_options": {"include_usage": 1}},
    ],
)
def test_stream_options_must_go_with_a_stream_and_say_true_or_false(
    tok: Any, kw: dict[str, Any]
) -> None:
    with pytest.raises(InvalidParameter) as e:
        parse(body(**kw), tok, "m", 512, chat=True)
    assert e.value.param == "stream_options"
    on = parse(body(stream=True, stream_options={"include_usage": None}), tok, "m", 512, True)
    assert on.stream and not on.include_usage


def test_a_legacy_completion_without_max_tokens_gets_sixteen(tok: Any) -> None:
    # OpenAI's documented default for /v1/completions, and vLLM's: it ran to the end of the
    # context window (510 tokens on the tiny model) as a chat answer may.
    prompt = {"model": "m", "prompt": "abc"}
    assert parse(prompt, tok, "m", 512, chat=False).params.max_tokens == 16
    assert parse({**prompt, "max_tokens": 40}, tok, "m", 512, chat=False).params.max_tokens == 40
    small = parse(prompt, tok, "m", 8, chat=False)  # less room than 16: the room, no error
    assert small.params.max_tokens == 8 - len(small.prompt_ids) < 16


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
    assert "usage" not in s.chunk("hi", None)
    # With include_usage every chunk but the last says "usage": null (OpenAI's stream_options).
    counted = Shape("m", chat=True, include_usage=True)
    assert counted.chunk("hi", None)["usage"] is None
    assert counted.chunk(None, "stop")["usage"] is None
    assert counted.usage_chunk({"prompt_tokens": 1})["usage"] == {"prompt_tokens": 1}
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


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}, "tool_calls"),
        ({"role": "assistant", "content": "", "function_call": {"name": "f"}}, "function_call"),
        ({"role": "tool", "content": "18C", "tool_call_id": "c1"}, "tool_call_id"),
        ({"role": "tool", "content": "18C"}, "a tool message"),
        ({"role": "function", "content": "18C", "name": "f"}, "a function message"),
    ],
)
def test_a_history_of_tool_calls_is_refused_not_dropped(message: dict[str, Any], said: str) -> None:
    """Only each message's role and content reached the template: an assistant's calls became
    an empty turn and their results answered nothing, a 200 on broken context."""
    msgs = [{"role": "user", "content": "weather?"}, message, {"role": "user", "content": "so?"}]
    with pytest.raises(UnsupportedParameter) as e:
        check(body(messages=msgs, tool_choice="none"), "m", 512, chat=True)
    assert e.value.param == "messages" and said in e.value.message
    assert e.value.message.startswith("messages[1] ")
    # The neutral values OpenAI's SDK may send are not a history of calls.
    plain: dict[str, Any] = {
        "role": "assistant",
        "content": "hi",
        "tool_calls": [],
        "function_call": None,
    }
    check(body(messages=[plain, {"role": "user", "content": "so?"}]), "m", 512, chat=True)


def test_a_template_that_refuses_the_messages_is_a_400(
    tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As real templates do for, say, roles that do not alternate.
    monkeypatch.setattr(tok, "chat_template", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidParameter) as e:
        parse(body(), tok, "m", 512, chat=True)
    assert e.value.param == "messages" and "roles must alternate" in e.value.message


def test_a_missing_or_non_string_model_is_a_400_naming_the_field(tok: Any) -> None:
    # A missing model was a 404 "model None is not served here".
    for doc, says in (({"messages": body()["messages"]}, "is required"), (body(model=5), "5")):
        with pytest.raises(InvalidParameter) as e:
            parse(doc, tok, "m", 512, chat=True)
        assert not isinstance(e.value, ModelNotFound)
        assert e.value.status == 400 and e.value.param == "model" and says in e.value.message


@pytest.mark.parametrize(
    ("kw", "chat"),
    [
        ({"logprobs": True}, True),
        ({"top_logprobs": 3}, True),
        ({"logprobs": 0}, False),  # completions' integer form: 0 still asks for logprobs
        ({"echo": True}, False),
        ({"best_of": 2}, False),
        ({"suffix": "and then"}, False),
        ({"presence_penalty": 0.5}, True),
        ({"frequency_penalty": -1}, False),
        ({"logit_bias": {"389": -100}}, True),
        ({"response_format": {"type": "json_object"}}, True),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True),
        ({"tool_choice": "required"}, True),
        ({"functions": [{"name": "f"}]}, True),
    ],
)
def test_parameters_that_would_be_ignored_are_refused(
    tok: Any, kw: dict[str, Any], chat: bool
) -> None:
    # They were silently ignored: an answer without the logprobs or echo it asked for.
    doc = body(**kw) if chat else {"model": "m", "prompt": "hi", **kw}
    with pytest.raises(UnsupportedParameter) as e:
        parse(doc, tok, "m", 512, chat=chat)
    (key,) = kw
    assert e.value.status == 400 and e.value.param == key and key in e.value.message
    assert e.value.body()["error"]["code"] == "unsupported_parameter"


@pytest.mark.parametrize(
    ("kw", "chat", "says"),
    [
        (
            {"frequency_penalty": -3},
            True,
            "frequency_penalty must be a number from -2 to 2, got -3",
        ),
        ({"presence_penalty": "0"}, True, "presence_penalty must be a number from -2 to 2"),
        ({"presence_penalty": True}, True, "presence_penalty must be a number"),
        ({"logit_bias": []}, True, "logit_bias must be an object of token ids to numbers"),
        ({"logit_bias": {"1": 101}}, True, "logit_bias must be an object"),
        ({"top_logprobs": -1}, True, "top_logprobs must be a whole number from 0 to 20, got -1"),
        ({"logprobs": 6}, False, "logprobs must be true, false or 0 to 5, got 6"),
        ({"best_of": 0}, False, "best_of must be a whole number from 1 to 20, got 0"),
        ({"echo": "yes"}, False, "echo must be true or false"),
        ({"suffix": 5}, False, "suffix must be a string, got 5"),
        ({"response_format": "json"}, True, 'response_format must be an object with a "type"'),
        ({"tool_choice": "always"}, True, 'tool_choice must be "none", "auto", "required" or'),
        ({"tools": {"type": "function"}}, True, "tools must be a list of tools"),
    ],
)
def test_a_value_openai_refuses_is_invalid_not_unsupported(
    tok: Any, kw: dict[str, Any], chat: bool, says: str
) -> None:
    # It was "not supported by this server; leave it out": the value, not the parameter, is
    # the client's mistake, as OpenAI's "-3 is less than the minimum of -2" says.
    doc = body(**kw) if chat else {"model": "m", "prompt": "hi", **kw}
    with pytest.raises(InvalidParameter) as e:
        parse(doc, tok, "m", 512, chat=chat)
    assert not isinstance(e.value, UnsupportedParameter), e.value.message
    (key,) = kw
    assert e.value.param == key and e.value.message.startswith(says), e.value.message
    assert e.value.body()["error"]["code"] == "invalid_parameter"


def test_values_that_ask_for_nothing_and_harmless_parameters_pass(tok: Any) -> None:
    harmless: dict[str, Any] = {
        "logprobs": False,
        "top_logprobs": 0,
        "echo": False,
        "best_of": 1,
        "suffix": None,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "auto",
        "stream": None,  # OpenAI's spec: nullable, default false (a wrapper's kwargs.get)
        "user": "u",
    }
    assert not parse(body(**harmless), tok, "m", 512, chat=True).stream
    told_not_to = {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
    }
    assert parse(body(**told_not_to), tok, "m", 512, chat=True).prompt_ids


def test_string_content_parts_are_text_and_other_parts_are_refused(tok: Any) -> None:
    # ["hello"] became an empty message answered with a 200; parts join as vLLM joins them.
    parts = ["hel", {"type": "text", "text": "lo"}]
    mixed = parse(body(messages=[{"role": "user", "content": parts}]), tok, "m", 512, chat=True)
    plain = parse(body(messages=[{"role": "user", "content": "hel\nlo"}]), tok, "m", 512, chat=True)
    assert mixed.prompt_ids == plain.prompt_ids
    # An image the model would never see was dropped, and the text answered with a 200.
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {}}]
    with pytest.raises(UnsupportedParameter) as refused:
        parse(body(messages=[{"role": "user", "content": image}]), tok, "m", 512, chat=True)
    assert '"image_url" part' in refused.value.message and refused.value.param == "messages"
    for bad in (5, None, ["x"]):
        with pytest.raises(InvalidParameter) as e:
            parse(body(messages=[{"role": "user", "content": [bad]}]), tok, "m", 512, chat=True)
        assert e.value.param == "messages" and "content[0]" in e.value.message


def test_a_prompt_too_long_to_fit_is_refused_before_tokenizing() -> None:
    # check() has no tokenizer: a prompt of megabytes is refused without seconds of it.
    room = 512 - 10
    fits = "x" * (room * MAX_CHARS_PER_TOKEN)
    check({"model": "m", "prompt": fits, "max_tokens": 10}, "m", 512, chat=False)
    with pytest.raises(ContextTooLong) as e:
        check({"model": "m", "prompt": fits + "x", "max_tokens": 10}, "m", 512, chat=False)
    assert e.value.param == "prompt" and "context window is 512 tokens" in e.value.message
    assert e.value.message.endswith("with max_tokens 10. Shorten the prompt or lower max_tokens")
    with pytest.raises(ContextTooLong) as e:  # no max_tokens sent: none quoted ("max_tokens 1")
        check({"model": "m", "prompt": "x" * 600 * MAX_CHARS_PER_TOKEN}, "m", 512, chat=False)
    assert e.value.message.endswith("characters a token). Shorten the prompt"), e.value.message
    msgs = [{"role": "user", "content": fits}, {"role": "user", "content": "x"}]
    with pytest.raises(ContextTooLong):
        check(body(messages=msgs, max_tokens=10), "m", 512, chat=True)
    with pytest.raises(ContextTooLong) as e:  # no room for a prompt at all
        check(body(max_tokens=512), "m", 512, chat=True)
    assert e.value.param == "max_tokens"


@pytest.mark.parametrize("chat", [True, False])
def test_an_unpaired_surrogate_is_a_400_not_a_500(tok: Any, chat: bool) -> None:
    # A JavaScript string cut inside an emoji: "hi \ud83d" on the wire, which json.loads
    # takes and the tokenizer raised on (TypeError): a 500, retried by the JS SDK.
    import json

    text = json.loads('"hi \\ud83d"')
    doc = (
        body(messages=[{"role": "user", "content": text}])
        if chat
        else {"model": "m", "prompt": text}
    )
    with pytest.raises(InvalidParameter) as e:
        parse(doc, tok, "m", 512, chat=chat)
    assert e.value.param == ("messages" if chat else "prompt")
    assert "unpaired UTF-16 surrogate at character 3" in e.value.message


@pytest.mark.parametrize(("stop", "where"), [("\ud83d", "stop"), (["x", "a\ud83d"], "stop[1]")])
def test_half_a_surrogate_in_a_stop_sequence_is_a_400(tok: Any, stop: object, where: str) -> None:
    # It can never match: the sequence was silently ignored and the answer ran past it.
    with pytest.raises(InvalidParameter) as e:
        parse(
            body(messages=[{"role": "user", "content": "hi"}], stop=stop), tok, "m", 512, chat=True
        )
    assert e.value.param == "stop"
    assert e.value.message.startswith(f"{where} holds an unpaired UTF-16 surrogate")


def test_an_assistants_refusal_part_is_history_text(tok: Any) -> None:
    # openai-python's assistant message may hold a refusal part: it was refused as a non-text
    # part. vLLM reads it as text; so does this server. An empty response_format is text too.
    refusal = {"type": "refusal", "refusal": "I cannot help with that."}
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [refusal]},
        {"role": "user", "content": "why?"},
    ]
    as_text = [*history[:1], {"role": "assistant", "content": refusal["refusal"]}, history[2]]
    got = parse(body(messages=history, response_format={}), tok, "m", 512, chat=True)
    assert got.prompt_ids == parse(body(messages=as_text), tok, "m", 512, chat=True).prompt_ids


def test_an_assistants_refusal_alone_is_history_text(tok: Any) -> None:
    # OpenAI's API answers a refusal with content null and the text in "refusal"; the SDKs
    # send that message back in the history as it came. It was refused as content missing.
    said = "I cannot help with that."
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "refusal": said},
        {"role": "user", "content": "why?"},
    ]
    as_text = [*history[:1], {"role": "assistant", "content": said}, history[2]]
    got = parse(body(messages=history), tok, "m", 512, chat=True)
    assert got.prompt_ids == parse(body(messages=as_text), tok, "m", 512, chat=True).prompt_ids


def test_a_context_overflow_names_what_to_change(tok: Any) -> None:
    # It named the prompt where max_tokens was too big, and quoted a max_tokens of 1 that
    # nobody sent where the prompt alone filled the window.
    n = len(parse(body(), tok, "m", 512, chat=True).prompt_ids)
    with pytest.raises(ContextTooLong) as e:
        parse(body(max_tokens=512 - n + 1), tok, "m", 512, chat=True)
    assert e.value.param == "max_tokens"
    assert f"Lower max_tokens to {512 - n} or less" in e.value.message
    with pytest.raises(ContextTooLong) as e:
        parse(body(max_completion_tokens=512 - n + 1), tok, "m", 512, chat=True)
    assert e.value.param == "max_completion_tokens"
    with pytest.raises(ContextTooLong) as e:  # the prompt alone fills the window
        parse(body(), tok, "m", n, chat=True)
    assert e.value.param == "messages" and "max_tokens" not in e.value.message
    assert f"the prompt is {n} tokens, which leaves no room for an answer" in e.value.message


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user"},  # read as an empty message, and answered
        {"role": "user", "content": None},
        {"role": "system", "content": None},
        {"role": "", "content": "hi"},
        {"role": "robot", "content": "hi"},  # "robot: hi" went to the model
        {"role": None, "content": "hi"},
        {"role": "user", "content": [{"type": "text"}]},  # a part without its text
        {"role": "user", "content": []},
        {"role": "assistant", "content": [{"type": "refusal"}]},
        # OpenAI's: content may be left out only with tool_calls, and those are refused.
        {"role": "assistant"},
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": None, "refusal": None},
        {"role": "assistant", "content": None, "refusal": ["no"]},
        {"role": "user", "content": None, "refusal": "no"},  # only an assistant refuses
    ],
)
def test_messages_are_checked_as_openai_checks_them(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameter) as e:
        check(body(messages=[message]), "m", 512, chat=True)
    assert e.value.status == 400 and e.value.param == "messages"
    assert "messages[0]" in e.value.message


def test_ignore_eos_is_a_boolean_and_errors_quote_values_as_json_cut_short() -> None:
    with pytest.raises(InvalidParameter) as e:  # "yes" was read as false
        check(body(ignore_eos="yes"), "m", 512, chat=True)
    assert e.value.param == "ignore_eos" and e.value.message.endswith('got "yes"')
    assert check(body(ignore_eos=True), "m", 512, chat=True).params.ignore_eos
    assert not check(body(ignore_eos=None), "m", 512, chat=True).params.ignore_eos
    big = 10**300  # each was quoted whole, 300 digits
    bigs: list[dict[str, Any]] = [{"seed": big}, {"max_tokens": -big}, {"n": [big]}]
    for kw in [*bigs, {"temperature": big}]:
        with pytest.raises(InvalidParameter) as e:
            check(body(**kw), "m", 512, chat=True)
        assert len(e.value.message) < 200 and "characters)" in e.value.message, e.value.message
    # JSON's words, not Python's: true, not True; "x", not 'x'.
    json_words: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": True}, "got true"),
        ({"temperature": "hot"}, 'got "hot"'),
    ]
    for kw, said in json_words:
        with pytest.raises(InvalidParameter) as e:
            check(body(**kw), "m", 512, chat=True)
        assert said in e.value.message, e.value.message


def test_a_developer_message_is_a_system_one_where_the_template_does_not_name_it(
    tok: Any,
) -> None:
    """OpenAI's newer name for the system role; the tiny model's template made a role of it."""
    dev = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
    sys = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    got = parse(body(messages=dev), tok, "m", 512, chat=True).prompt_ids
    assert got == parse(body(messages=sys), tok, "m", 512, chat=True).prompt_ids
    assert "<|system|>" in tok.decode(got) and "developer" not in tok.decode(got)


def test_openai_s_other_forms_are_unsupported_not_invalid() -> None:
    """Valid asks this server cannot honour: unsupported_parameter, as for logprobs."""
    for kw, param in (({"n": 2}, "n"), ({"prompt": [1, 2, 3]}, "prompt")):
        completions = "prompt" in kw
        doc = {"model": "m", **kw} if completions else body(**kw)
        with pytest.raises(UnsupportedParameter) as e:
            check(doc, "m", 512, chat=not completions)
        assert e.value.param == param
    for doc in ({"model": "m", "prompt": ["a", "b"]}, {"model": "m", "prompt": [[1, 2]]}):
        with pytest.raises(UnsupportedParameter):
            check(doc, "m", 512, chat=False)
    for kw in ({"n": 0}, {"n": -1}):
        with pytest.raises(InvalidParameter) as invalid:  # UnsupportedParameter's base class
            check(body(**kw), "m", 512, chat=True)
        assert invalid.value.code == "invalid_parameter"
    for n in (10**300, -(10**300)):  # quoted cut short, as every value an error quotes
        with pytest.raises(InvalidParameter) as big:
            check(body(n=n), "m", 512, chat=True)
        said = f"({len(str(n))} characters)"
        assert len(big.value.message) < 140 and said in big.value.message, big.value.message
    with pytest.raises(InvalidParameter, match="prompt must be a string, got 5"):
        check({"model": "m", "prompt": 5}, "m", 512, chat=False)


def test_top_p_zero_is_taken_and_both_max_token_names_are_checked() -> None:
    assert check(body(top_p=0), "m", 512, chat=True).params.top_p == 0.0
    # max_completion_tokens was used and a max_tokens of the wrong type beside it taken.
    for bad in ({"max_tokens": "x"}, {"max_tokens": 0}):
        with pytest.raises(InvalidParameter) as e:
            check(body(max_completion_tokens=2, **bad), "m", 512, chat=True)
        assert e.value.param == "max_tokens"
    c = check(body(max_completion_tokens=2, max_tokens=9), "m", 512, chat=True)
    assert (c.max_tokens, c.max_key) == (2, "max_completion_tokens")
