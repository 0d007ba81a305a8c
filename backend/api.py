"""OpenAI request validation for the model server (the response shapes: backend/shapes.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from backend.errors import (
    ContextTooLong,
    InvalidParameter,
    ModelNotFound,
    UnsupportedParameter,
    shown,
)
from backend.messages import chat_prompt, check_messages, check_unicode
from backend.sampling import SamplingParams

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
COMPLETION_DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens (OpenAI, vLLM)
# torch.Generator.manual_seed takes any 64-bit value, signed or unsigned; beyond, it raised
# in the engine's submit, a 500.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# The most characters one token can stand for, with a wide margin: BPE vocabularies' longest
# tokens are runs of spaces or punctuation some dozens of characters long. A prompt whose
# text alone is longer than the context window times this cannot fit whatever it tokenizes
# to, so it is refused before the tokenizer spends seconds on megabytes of it.
MAX_CHARS_PER_TOKEN = 256
# Parameters this server cannot honour, each with the values that ask for nothing: any
# other value is refused, as silently ignoring it gives a wrong answer (no logprobs, no
# echoed prompt, plain text where JSON was asked for, no tool call where one was required).
# Clients that send the neutral values (a 0 penalty, an empty logit_bias) are served.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logprobs": lambda v: v is None or v is False,  # completions' 0 still asks for them
    "top_logprobs": lambda v: v is None or (v == 0 and not isinstance(v, bool)),
    "echo": lambda v: v is None or v is False,
    "best_of": lambda v: v is None or (v == 1 and not isinstance(v, bool)),
    "suffix": lambda v: v is None or v == "",
    "presence_penalty": lambda v: v is None or (v == 0 and not isinstance(v, bool)),
    "frequency_penalty": lambda v: v is None or (v == 0 and not isinstance(v, bool)),
    "logit_bias": lambda v: v is None or v == {},
    "response_format": lambda v: (
        v is None or (isinstance(v, dict) and v.get("type", "text") == "text")
    ),
    "tool_choice": lambda v: v in (None, "none", "auto"),
    "function_call": lambda v: v in (None, "none", "auto"),
}


def _within(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _count(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


# What OpenAI's API takes for each, checked before whether this server honours it: a value
# it refuses as invalid ("-3 is less than the minimum of -2") was told "not supported; leave
# it out", as if the parameter, not the value, were the client's mistake.
_LOGPROBS_COUNT = _count(0, 5)  # completions' integer form (chat's is a boolean)
_BIAS = _within(-100, 100)
VALID: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: isinstance(v, bool) or _LOGPROBS_COUNT(v), "true, false or 0 to 5"),
    "top_logprobs": (_count(0, 20), "a whole number from 0 to 20"),
    "echo": (lambda v: isinstance(v, bool), "true or false"),
    "best_of": (_count(1, 20), "a whole number from 1 to 20"),
    "suffix": (lambda v: isinstance(v, str), "a string"),
    "presence_penalty": (_within(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": (_within(-2, 2), "a number from -2 to 2"),
    "logit_bias": (
        lambda v: isinstance(v, dict) and all(_BIAS(b) for b in v.values()),
        "an object of token ids to numbers from -100 to 100",
    ),
    "response_format": (
        lambda v: isinstance(v, dict) and isinstance(v.get("type", "text"), str),
        'an object with a "type"',
    ),
    "tool_choice": (
        lambda v: v in ("none", "auto", "required") or isinstance(v, dict),
        '"none", "auto", "required" or an object naming a tool',
    ),
    "function_call": (
        lambda v: v in ("none", "auto") or isinstance(v, dict),
        '"none", "auto" or an object naming a function',
    ),
    # An empty list is taken, as vLLM takes it (agent frameworks send one with no tools)
    "tools": (lambda v: isinstance(v, list), "a list of tools"),
    "functions": (lambda v: isinstance(v, list), "a list of functions"),
}

# Tools the model may call, unless told not to: this server parses no tool calls (vLLM
# refuses them too without a tool-call parser), so the client would get text, not a call.
TOOL_LISTS = {"tools": "tool_choice", "functions": "function_call"}


@dataclass(frozen=True)
class Checked:
    """A request with every check but the tokenizer's done: cheap, on the event loop."""

    chat: bool
    messages: list[dict[str, str]]  # chat: the messages, each content a string
    prompt: str  # completions: the prompt
    max_tokens: int | None
    max_key: str  # the name max_tokens came under, for the error that names it
    params: SamplingParams  # max_tokens is a placeholder until the prompt is tokenized
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Parsed:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidParameter(f"{key} must be a number, got {shown(v)}", param=key)
    # json.loads takes NaN and Infinity; NaN passes every range check below (all False).
    # Only floats: math.isfinite overflows on an int too big for a float.
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidParameter(f"{key} must be a finite number, got {shown(v)}", param=key)
    if v < lo or v > hi:
        raise InvalidParameter(f"{key} must be in [{lo}, {hi}], got {shown(v)}", param=key)
    return float(v)


def _int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidParameter(f"{key} must be an integer, got {shown(v)}", param=key)
    return v


def _max_tokens(body: dict[str, Any]) -> tuple[int | None, str]:
    """max_completion_tokens (the current name) before max_tokens; 0 is refused, not absent.
    Both are checked: a max_tokens of the wrong type was taken beside the other."""
    given = {key: _int(body, key) for key in ("max_completion_tokens", "max_tokens")}
    for key, v in given.items():
        if v is not None and v < 1:
            raise InvalidParameter(f"{key} must be at least 1, got {shown(v)}", param=key)
    for key, v in given.items():
        if v is not None:
            return v, key
    return None, "max_tokens"


def _seed(body: dict[str, Any]) -> int | None:
    seed = _int(body, "seed")
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise InvalidParameter(
            f"seed must be in [{SEED_MIN}, {SEED_MAX}] (64 bits), got {shown(seed)}", param="seed"
        )
    return seed


def _model(body: dict[str, Any], served: str) -> None:
    model = body.get("model")
    if model is None:  # a missing field is the request's fault, not an unknown model
        raise InvalidParameter(
            f"the model field is required; this server serves {json.dumps(served)}", param="model"
        )
    if not isinstance(model, str):
        raise InvalidParameter(f"model must be a string, got {shown(model)}", param="model")
    if model != served:
        raise ModelNotFound(
            f"model {shown(model)} is not served here; this server serves {json.dumps(served)} "
            "(GET /v1/models)",
            param="model",
        )


def _unsupported(body: dict[str, Any]) -> None:
    for key, (valid, want) in VALID.items():
        v = body.get(key)
        if v is not None and not valid(v):
            raise InvalidParameter(f"{key} must be {want}, got {shown(v)}", param=key)
    for key, harmless in UNSUPPORTED.items():
        v = body.get(key)
        if not harmless(v):
            raise UnsupportedParameter(
                f"{key} is not supported by this server, got {shown(v)}; leave it out", param=key
            )
    for key, choice in TOOL_LISTS.items():
        if body.get(key) and body.get(choice) != "none":
            raise UnsupportedParameter(
                f"{key}: this server parses no tool calls, so the model could not call one; "
                f'leave {key} out, or send {choice}: "none"',
                param=key,
            )


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise InvalidParameter(
            f"stop must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings",
            param="stop",
        )
    for i, s in enumerate(stop or ()):  # half an emoji can never match: it was ignored
        check_unicode(s, "stop" if isinstance(body["stop"], str) else f"stop[{i}]", "stop")
    return tuple(stop or ())


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    stream = False if stream is None else stream  # null: the default, as OpenAI's spec has it
    if not isinstance(stream, bool):
        raise InvalidParameter("stream must be true or false", param="stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise InvalidParameter("stream_options must be an object", param="stream_options")
    if not stream:  # OpenAI's and vLLM's 400: options for a stream nobody asked for
        raise InvalidParameter(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    usage = opts.get("include_usage")
    if usage is not None and not isinstance(usage, bool):  # "false" was read as true
        raise InvalidParameter(
            "stream_options.include_usage must be true or false", param="stream_options"
        )
    return stream, usage is True


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):  # "yes" was read as false
        raise InvalidParameter(f"{key} must be true or false, got {shown(v)}", param=key)
    return v is True


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt:  # OpenAI's other forms: valid, not served here
        raise UnsupportedParameter(
            "prompt as token ids or as several prompts is not supported by this server; send "
            "one string (one request per prompt)",
            param="prompt",
        )
    if not isinstance(prompt, str):
        raise InvalidParameter(f"prompt must be a string, got {shown(prompt)}", param="prompt")
    check_unicode(prompt, "prompt", "prompt")
    return prompt


def _fits_at_all(c: Checked, context_len: int) -> None:
    """Refuse, untokenized, a prompt whose characters alone need more tokens than there are."""
    chars = sum(len(m["content"]) for m in c.messages) + len(c.prompt)
    asked = c.max_tokens or 1
    if asked >= context_len:  # a prompt has a token at least
        raise ContextTooLong(
            f"this model's context window is {context_len} tokens; {c.max_key} {asked} "
            f"leaves no room for the prompt. Lower {c.max_key}",
            param=c.max_key,
        )
    if chars > (context_len - asked) * MAX_CHARS_PER_TOKEN:
        # The ask only where one was sent: none quoted "max_tokens 1" that nobody wrote.
        ask = f" with {c.max_key} {asked}" if c.max_tokens is not None else ""
        lower = f" or lower {c.max_key}" if c.max_tokens is not None else ""
        raise ContextTooLong(
            f"this model's context window is {context_len} tokens; the prompt is {chars} "
            f"characters, more than {context_len - asked} tokens can hold (at most "
            f"{MAX_CHARS_PER_TOKEN} characters a token){ask}. Shorten the prompt{lower}",
            param="messages" if c.chat else "prompt",
        )


def check(body: Any, served: str, context_len: int, chat: bool) -> Checked:
    """Every check that needs no tokenizer: run on the event loop before the costly part."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    _model(body, served)
    _unsupported(body)
    messages = check_messages(body.get("messages")) if chat else []
    prompt = "" if chat else _prompt(body)
    n = _int(body, "n")
    if n is not None and n < 1:
        raise InvalidParameter(f"n must be at least 1, got {shown(n)}", param="n")
    if n not in (None, 1):  # a valid ask this server cannot honour, as the ones above
        raise UnsupportedParameter(
            f"n is not supported by this server beyond 1, got {shown(n)}; send one request "
            "per completion",
            param="n",
        )
    max_tokens, max_key = _max_tokens(body)
    stream, include_usage = _stream(body)
    params = SamplingParams(
        max_tokens=max_tokens or 1,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        # 0 as OpenAI takes it: the most probable token alone (sampling.draw keeps it).
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(body),
        seed=_seed(body),
        ignore_eos=_bool(body, "ignore_eos"),
    )
    c = Checked(chat, messages, prompt, max_tokens, max_key, params, stream, include_usage)
    _fits_at_all(c, context_len)
    return c


def tokenize(c: Checked, tok: Any, context_len: int) -> Parsed:
    """The chat template and the tokenizer: seconds on a prompt of megabytes, so the server
    runs this in a thread (the fast tokenizer releases the GIL) and the event loop, /health
    and every stream with it, goes on meanwhile."""
    text = chat_prompt(tok, c.messages) if c.chat else c.prompt
    ids: list[int] = tok(text, add_special_tokens=not c.chat)["input_ids"]
    if not ids:  # nothing to prefill: the engine's forward pass would fail
        raise InvalidParameter(
            "the prompt has no tokens; send some text", param="messages" if c.chat else "prompt"
        )
    room, window = context_len - len(ids), f"this model's context window is {context_len} tokens"
    if room < 1:  # the prompt alone: whatever max_tokens says, the prompt is what must change
        raise ContextTooLong(
            f"{window}; the prompt is {len(ids)} tokens, which leaves no room for an answer. "
            "Shorten the prompt",
            param="messages" if c.chat else "prompt",
        )
    if c.max_tokens is not None and c.max_tokens > room:  # the prompt fits: the ask does not
        raise ContextTooLong(
            f"{window}; the prompt is {len(ids)} tokens and {c.max_key} {c.max_tokens}, "
            f"{len(ids) + c.max_tokens} in all. Lower {c.max_key} to {room} or less, or "
            "shorten the prompt",
            param=c.max_key,
        )
    # None asked for: a chat answer may fill what the context window leaves, as vLLM's (EOS
    # ends it sooner); a legacy completion gets 16 tokens, OpenAI's documented default for
    # /v1/completions and vLLM's (a client written for OpenAI that leaves it out held a batch
    # slot to the end of the window).
    default = room if c.chat else min(COMPLETION_DEFAULT_MAX_TOKENS, room)
    params = replace(c.params, max_tokens=c.max_tokens or default)
    return Parsed(ids, params, c.stream, c.include_usage)


def parse(body: Any, tok: Any, served: str, context_len: int, chat: bool) -> Parsed:
    """Both steps at once, for callers that are not on an event loop."""
    return tokenize(check(body, served, context_len, chat), tok, context_len)
