"""The operator-facing sections (gateway.config_ops): tokens a request can present, the
operators' names and tokens, through the loader as a start reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config_file import load_config
from gateway.config_ops import AdminSection
from gateway.errors import ConfigError
from tests.gateway.test_config import GOOD, write


@pytest.mark.parametrize(
    ("var", "key"),
    [
        ("GEOGATE_OPS__TOKEN", "ops.token"),
        ("GEOGATE_ADMIN__TOKEN", "admin.token"),
        ("GEOGATE_ADMIN__TOKENS__CAROL", "admin.tokens.CAROL"),
    ],
)
@pytest.mark.parametrize(
    "token", ["s3cret-0123456789abc\n", "ünïcödé-0123456789abc", "two words-0123456789"]
)
def test_a_token_no_header_can_carry_is_refused(
    tmp_path: Path, var: str, key: str, token: str
) -> None:
    """Taken, it matched no request: the scraper or the operator locked out, the throttle
    tripped by their retries. A file read into it (a Kubernetes secret) ends in a line break."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={var: token})
    msg = str(info.value)
    assert f"{var}: {key}: has a space, line break or non-ASCII character" in msg
    assert token.strip() not in msg and "\n" not in msg


def test_the_operators_are_the_tokens_and_the_one_of_old() -> None:
    admin = AdminSection.model_validate({"token": "t" * 16, "tokens": {"alice": "a" * 16}})
    assert admin.operators() == {"alice": "a" * 16, "admin": "t" * 16}
    with pytest.raises(ValueError, match=r"a token \(token is the operator 'admin'\): the"):
        AdminSection.model_validate({"token": "a" * 16, "tokens": {"alice": "a" * 16}})
    with pytest.raises(ValueError, match="share a name or a token: the audit") as info:
        AdminSection.model_validate({"tokens": {"alice": "a" * 16, "bob": "a" * 16}})
    assert "'admin'" not in str(info.value)  # no admin.token: not named
