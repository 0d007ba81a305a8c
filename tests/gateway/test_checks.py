"""Single-value checks of the config, and masking passwords out of URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import checks


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:****@127.0.0.1:6379/0"),
        ("rediss://user:hunter2@127.0.0.1", "rediss://user:****@127.0.0.1"),
        ("redis://user@127.0.0.1", "redis://user@127.0.0.1"),
        ("redis://127.0.0.1:1?password=hunter2&db=2", "redis://127.0.0.1:1?password=****&db=2"),
        (
            "redis+sentinel://:hunter2@127.0.0.1:1,127.0.0.2:2/m",
            "redis+sentinel://:****@127.0.0.1:1,127.0.0.2:2/m",
        ),
        ("redis://127.0.0.1", "redis://127.0.0.1"),
        ("redis:/:hunter2@127.0.0.1", "redis:/:****@127.0.0.1"),  # a typo is masked too
        ("redis://:pa:ss@127.0.0.1", "redis://:****@127.0.0.1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert checks.redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "rediss://:pw@127.0.0.1:6380",
        "redis://[::1]:6379",
        "unix:///run/redis.sock",
        "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.2:26379/mymaster/1",
    ],
)
def test_good_redis_urls(url: str) -> None:
    assert checks.redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:hunter2@127.0.0.1:6379", "http://:****@127.0.0.1:6379: use redis://"),
        ("127.0.0.1:6379", "use redis://"),
        ("redis://127.0.0.1:63x9", "bad host:port '127.0.0.1:63x9'"),
        ("redis://127.0.0.1:99999", "bad host:port"),
        ("redis://:6379", "bad host:port"),
        ("redis://127.0.0.1:", "bad host:port"),
        ("unix://", "socket's path"),
        ("redis+sentinel://127.0.0.1:1,127.0.0.2/m", "sentinel address '127.0.0.2' needs a port"),
        ("redis+sentinel://127.0.0.1:1", "needs /master-name"),
    ],
)
def test_bad_redis_urls_say_why_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("?", r"\?")) as e:
        checks.redis_url(url)
    assert "hunter2" not in str(e.value)


def test_networks_paths_and_names() -> None:
    assert checks.network("10.0.0.0/8") == "10.0.0.0/8"
    assert checks.network("::1") == "::1"
    for bad in ("10.0.0.0/33", "10.0.0.300", "any"):
        with pytest.raises(ValueError, match="not an address or network"):
            checks.network(bad)
    assert checks.api_path("/v1/tokenize") == "/v1/tokenize"
    for bad in ("/v1/../sleep", "/v1/.hidden", "/sleep", "/v1/", "/v1/a b", "/v1/%2e%2e"):
        with pytest.raises(ValueError, match="not a path under /v1/"):
            checks.api_path(bad)
    assert checks.operator_name("alice@ops") == "alice@ops"
    for bad in ("", "a b", "x" * 65, "al\nice"):
        with pytest.raises(ValueError, match="operator name"):
            checks.operator_name(bad)
    assert checks.upstream_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    for bad in ("http://127.0.0.1:8000/v1", "http://127.0.0.1/llm/v1/"):
        with pytest.raises(ValueError, match="ends in /v1"):
            checks.upstream_url(bad)


def test_unreadable_says_why(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    assert checks.unreadable(tmp_path / "cert.pem") is None
    assert checks.unreadable(tmp_path / "none.pem") == "No such file or directory"
    assert checks.unreadable(tmp_path) == "Is a directory"


@pytest.mark.parametrize(
    ("text", "most", "ok"),
    [("42", 18, True), ("", 18, False), ("\u00b2", 18, False), ("-1", 18, False),
     (" 5", 18, False), ("9" * 19, 18, False), ("99999", 5, True), ("999999", 5, False)],
)  # fmt: skip
def test_is_decimal_is_what_int_reads_as_a_plain_count(text: str, most: int, ok: bool) -> None:
    assert checks.is_decimal(text, most) is ok
    if ok:
        assert int(text) >= 0
