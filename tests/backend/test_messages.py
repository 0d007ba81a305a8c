"""backend/messages.py's prompt: when a developer message is a system one (the checks of the
messages themselves run through api.check, in test_api.py)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.messages import chat_prompt

DEV = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]


class Tok:
    """A tokenizer's template surface: the roles it was handed, as its text."""

    def __init__(self, template: Any) -> None:
        self.chat_template = template

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        return " ".join(m["role"] for m in messages)


@pytest.mark.parametrize(
    ("template", "roles"),
    [
        ("{% if m.role == 'developer' %}", "developer user"),  # it names the role
        ('{% if m.role == "developer" %}', "developer user"),
        ("{# thanks to the developers #}{{ m.role }}", "system user"),  # a mention is not it
        ("{{ m.role }}", "system user"),
        # Named templates: the default one is applied to a request without tools.
        ({"default": "{{ m.role }}", "tool_use": "{% if r == 'developer' %}"}, "system user"),
        ({"default": "{% if r == 'developer' %}"}, "developer user"),
    ],
)
def test_a_developer_message_is_a_system_one_unless_the_template_names_the_role(
    template: Any, roles: str
) -> None:
    assert chat_prompt(Tok(template), DEV) == roles


def test_with_no_template_the_plain_prompt_says_system() -> None:
    assert chat_prompt(Tok(None), DEV) == "system: be brief\nuser: hi\nassistant:"
