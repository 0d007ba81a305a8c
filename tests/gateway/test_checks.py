"""Single-value checks of the config, and masking passwords out of URLs."""

from __future__ import annotations

import re
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
        # What urlsplit refuses (a bracket left open, no IPv6 address in brackets) is masked
        # too: the message about the bad URL must not be a traceback instead.
        ("http://[::1:21713", "http://[::1:21713"),
        ("http://u:hunter2@[::1:21713/x", "http://u:****@[::1:21713/x"),
        ("http://:hunter2@[x]:1", "http://:****@[x]:1"),
        ("http://[x]:1/?password=hunter2", "http://[x]:1/?password=****"),
        # Shown as given: "HTTP://" is not "http://" in a message about its case.
        ("HTTP://u:hunter2@127.0.0.1:80", "HTTP://u:****@127.0.0.1:80"),
        ("http://127.0.0.1:80/a\r\nb", "http://127.0.0.1:80/a\r\nb"),
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
        # fleet.keys read neither: database 0 and no TLS, unsaid
        ("redis+sentinel://:hunter2@127.0.0.1:1/m?db=2", "takes no query"),
        ("redis+sentinel://127.0.0.1:1/m?ssl=true", "TLS to sentinels is not supported"),
        ("redis+sentinel://127.0.0.1:1/m/x", "path is /master-name or /master-name/db"),
        ("redis+sentinel://127.0.0.1:1/m/1/2", "path is /master-name or /master-name/db"),
        # redis-py ignores a path that is no number: database 0, unsaid.
        ("redis://:hunter2@127.0.0.1:6379/x", "the path /x is not a database number"),
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


def test_fleet_ids_are_url_segments_member_names_and_ctl_arguments() -> None:
    for good in ("eu-central", "fra-gpu-1", "us_east.2", "_x", "9"):
        assert checks.fleet_id(good) == good
    for bad in ("", "a/b", "a@b", "a b", "a|b", "..", ".x", "-x", "é", "a:b", "a%2Fb"):
        with pytest.raises(ValueError, match=f"id {re.escape(repr(bad))}: use letters"):
            checks.fleet_id(bad)


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


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "https://llm.internal",
        "http://[::1]:8000/",
        "https://user:pw@llm.internal:8443/base",  # credentials: sent as Basic auth
        "http://127.0.0.1:65535/prefix/",
    ],
)
def test_good_upstream_urls(url: str) -> None:
    assert checks.upstream_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:abc", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:", "port must be a number from 1 to 65535"),
        ("http://127.0.0.1:80\r\nX: y", "a space or control character"),
        ("http://127.0.0.1 :80", "a space or control character"),
        ("http://127.0.0.1:80/a b", "a space or control character"),
        ("http://127.0.0.1:80/?a=b", "a query or fragment"),
        ("http://127.0.0.1:80/#x", "a query or fragment"),
        ("HTTP://127.0.0.1:80", "use http:// or https:// in lower case"),
        ("ftp://127.0.0.1", "use http:// or https://"),
        ("127.0.0.1:8000", "use http:// or https://"),
        ("http://:80", "needs a host"),
        ("http://", "needs a host"),
        ("http://[::1:80", "not a valid host"),
        ("http://[x]:1", "not a valid host"),
        ("http://a|b:80", "not a valid host"),
        ("http://127.0.0.1:8000/v1", "ends in /v1"),
    ],
)
def test_bad_upstream_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        checks.upstream_url(url)


def test_public_urls_are_empty_or_http_urls_without_credentials() -> None:
    for good in ("", "https://eu.api.example.com", "http://127.0.0.11:8080/", "https://x/gw"):
        assert checks.public_url(good) == good
    for bad, message in [
        ("not a url", "use http:// or https://"),
        ("https://eu.example.com:99999/x", "port must be a number from 1 to 65535"),
        ("ftp://127.0.0.11", "use http:// or https://"),
        ("http://", "needs a host"),
        ("https://eu.example.com/?x=1", "a query or fragment"),
        ('https://eu"x.example.com/', "not a valid host"),
        ("https://u:pw@eu.example.com", "no credentials"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            checks.public_url(bad)


def test_listen_hosts_and_model_names_are_never_empty() -> None:
    assert checks.listen_host("0.0.0.0") == "0.0.0.0"
    for bad in ("", " "):
        with pytest.raises(ValueError, match=r"use 0\.0\.0\.0 to listen on all interfaces"):
            checks.listen_host(bad)
    assert checks.model_name("llama-3.1-8b-instruct") == "llama-3.1-8b-instruct"
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="empty model name"):
            checks.model_name(bad)


def test_error_text_is_the_type_and_the_words_with_passwords_masked() -> None:
    exc = ConnectionError("Error 111 connecting to redis://:hunter2@10.0.0.5:6379. Refused.")
    assert checks.error_text(exc) == (
        "ConnectionError: Error 111 connecting to redis://:****@10.0.0.5:6379. Refused."
    )
    assert checks.error_text(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/health", True),
        ("/health?full=1", True),
        ("/health\n", False),
        ("/he\r\nX-Injected: 1", False),
        ("/he alth", False),
        ("/health#x", False),
        ("/health\x00", False),
        ("health", False),
    ],
)
def test_a_path_appended_to_an_upstreams_url_makes_one_request_line(path: str, ok: bool) -> None:
    # A line break passed --check and stopped the gateway at start with a traceback.
    if ok:
        assert checks.url_path(path) == path
    else:
        with pytest.raises(ValueError):
            checks.url_path(path)
