"""A chat request's messages, checked as OpenAI checks them, and the prompt made of them."""

from __future__ import annotations

import functools
import re
from typing import Any

from backend.errors import InvalidParameter, UnsupportedParameter, shown

# OpenAI's message roles; "robot" or "" was read as a role (and "robot: hi" sent to the model).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# What a conversation that used tools carries: calls in an assistant's message, results in a
# tool's. This server parses no tool calls (api.TOOL_LISTS) and kept only each message's
# role and content, so a history with them reached the model as an empty assistant turn and
# a result answering nothing: a 200 on broken context, where a refusal says what to change.
TOOL_FIELDS = ("tool_calls", "function_call", "tool_call_id")
TOOL_ROLES = ("tool", "function")
# A template names the developer role as a quoted string ('developer' or "developer"): a
# mention in a comment or a default system prompt ("by its developers") is not that.
DEVELOPER_NAMED = re.compile(r"""['"]developer['"]""")


def check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidParameter("messages must be a non-empty list", param="messages")
    return [_message(i, m) for i, m in enumerate(messages)]


def _message(i: int, m: Any) -> dict[str, str]:
    """One message, as OpenAI checks it: a role of its own, and content (a string or a
    non-empty list of parts); a user's without it was read as an empty message and answered.
    Only an assistant's that calls tools may leave it out, and such a history is refused."""
    if not isinstance(m, dict) or "role" not in m:
        raise InvalidParameter(f"messages[{i}] must be an object with a role", param="messages")
    role = m["role"]
    if role not in ROLES:
        raise InvalidParameter(
            f"messages[{i}].role must be one of {', '.join(ROLES)}; got {shown(role)}",
            param="messages",
        )
    used = next((f for f in TOOL_FIELDS if m.get(f) not in (None, [])), None)
    if used is not None or role in TOOL_ROLES:
        what = f"carries {used}" if used is not None else f"is a {role} message"
        raise UnsupportedParameter(
            f"messages[{i}] {what}: this server parses no tool calls, and its model would not "
            "see them; send the conversation without tool calls and their results",
            param="messages",
        )
    content = m.get("content")
    if content is None and role == "assistant" and isinstance(m.get("refusal"), str):
        # An assistant turn that refused, as OpenAI's API returns it (content null, the text
        # in "refusal") and the SDKs send it back in the history: its text, as a refusal part's.
        content = m["refusal"]
    if content is None:
        raise InvalidParameter(
            f"messages[{i}].content is required in a {role} message (a string or a list of "
            f"text parts); got {'null' if 'content' in m else 'none'}",
            param="messages",
        )
    if isinstance(content, list) and content:  # text parts: joined as vLLM joins them
        content = "\n".join(_part_text(i, j, p) for j, p in enumerate(content))
    if not isinstance(content, str):  # [] too, as OpenAI's
        raise InvalidParameter(
            f"messages[{i}].content must be a string or a non-empty list of parts, "
            f"got {shown(content)}",
            param="messages",
        )
    check_unicode(content, f"messages[{i}].content", "messages")
    return {"role": role, "content": content}


def _part_text(i: int, j: int, part: Any) -> str:
    if isinstance(part, str):
        # OpenAI's SDK types allow only objects; a bare string is taken as the text part it
        # plainly means rather than dropped, which answered an empty message with a 200.
        return part
    if not isinstance(part, dict):
        raise InvalidParameter(
            f"messages[{i}].content[{j}] must be a content part object or a string, "
            f"got {shown(part)}",
            param="messages",
        )
    kind = part.get("type", "text")
    # An assistant's earlier refusal, in the history: its text, as vLLM reads it.
    key = "refusal" if kind == "refusal" else "text"
    if kind not in ("text", "refusal"):  # an image the model would never see: not a 200
        raise UnsupportedParameter(
            f"messages[{i}].content[{j}] is a {shown(kind)} part; this server's model reads "
            "text alone: send text parts",
            param="messages",
        )
    text = part.get(key)
    if not isinstance(text, str):  # missing too: OpenAI's 400, where it was an empty text
        raise InvalidParameter(
            f"messages[{i}].content[{j}].{key} must be a string, got "
            f"{shown(text) if key in part else 'none'}",
            param="messages",
        )
    return text


def check_unicode(text: str, where: str, param: str) -> None:
    """JSON can carry half of a UTF-16 surrogate pair ("\\ud83d": a JavaScript string cut
    inside an emoji), which no tokenizer takes: a 400 naming it, where it was a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameter(
            f"{where} holds an unpaired UTF-16 surrogate at character {exc.start}: not "
            "text; send whole characters",
            param=param,
        ) from None


def chat_prompt(tok: Any, messages: list[dict[str, str]]) -> str:
    template = getattr(tok, "chat_template", None)
    # Several named templates: "default" is the one applied to a request without tools.
    applied = template.get("default", "") if isinstance(template, dict) else template or ""
    # "developer", OpenAI's newer name for the system role, is a system message to a model
    # whose template does not name it, as OpenAI treats it for such models: a template that
    # knows only system, user and assistant may drop a role it does not know, or refuse it,
    # and the tiny model's made it a role of its own.
    if any(m["role"] == "developer" for m in messages) and not _names_developer(str(applied)):
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    if template:
        return _apply_template(tok, messages)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


@functools.lru_cache(maxsize=4)
def _names_developer(template: str) -> bool:
    """Once per template (a loaded model's does not change; a string keeps its hash), not a
    search of some kilobytes on every chat request."""
    return DEVELOPER_NAMED.search(template) is not None


def _apply_template(tok: Any, messages: list[dict[str, str]]) -> str:
    from jinja2 import TemplateError, TemplateSyntaxError

    try:
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except TemplateSyntaxError:
        raise  # the model's template itself is broken: the server's fault, a 500 and its log
    except TemplateError as exc:
        # A template refusing these messages (raise_exception: "roles must alternate", a
        # role it does not know) is the client's to fix.
        raise InvalidParameter(
            f"the model's chat template refuses these messages: {exc}", param="messages"
        ) from None
