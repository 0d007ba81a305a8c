"""gateway.h1.scope: the ASGI scope of a request, as uvicorn builds it, and the addresses."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import RequestInvalid, TransferCodingUnsupported
from gateway.h1.refuse import Refused
from gateway.h1.scope import ASGI_VERSIONS, Addresses, addresses, check_framing, request_scope


class Transport:
    def __init__(self, **info: Any) -> None:
        self.info = info

    def get_extra_info(self, name: str) -> Any:
        return self.info.get(name)


def test_the_scope_decodes_the_path_and_keeps_what_was_sent() -> None:
    where = Addresses(("127.0.0.9", 5000), ("127.0.0.1", 8080), "http")
    headers = [(b"host", b"x")]
    extensions: dict[str, object] = {"geogate.pipe": None}
    state = {"k": 1}
    scope = request_scope(
        "POST", "1.1", b"/v1/a%20b?x=1", headers, where, "/api", state, extensions
    )
    assert scope["path"] == "/api/v1/a b" and scope["raw_path"] == b"/api/v1/a%20b"
    assert scope["query_string"] == b"x=1" and scope["method"] == "POST"
    assert scope["client"] == ("127.0.0.9", 5000) and scope["server"] == ("127.0.0.1", 8080)
    assert scope["headers"] is headers and scope["extensions"] is extensions
    assert scope["asgi"] == ASGI_VERSIONS and scope["http_version"] == "1.1"
    assert scope["state"] == state and scope["state"] is not state  # a request's own copy
    plain = request_scope("GET", "1.0", b"/healthz", [], where, "", {}, {})
    assert plain["path"] == "/healthz" and plain["query_string"] == b""


def test_an_absolute_form_targets_authority_is_the_host() -> None:
    where = Addresses(None, None, "http")
    sent = [(b"host", b"x"), (b"accept", b"*/*")]
    for url, host in (
        (b"http://api.example.com/v1/models?a=1", b"api.example.com"),
        (b"http://API.example.com:8080/v1/models", b"API.example.com:8080"),
        (b"http://[::1]:9180/metrics", b"[::1]:9180"),
    ):
        scope = request_scope("GET", "1.1", url, sent, where, "", {}, {})
        assert scope["headers"] == [(b"host", host), (b"accept", b"*/*")]
        assert scope["path"].startswith(("/v1/models", "/metrics"))
    assert sent == [(b"host", b"x"), (b"accept", b"*/*")]  # the connection's own list untouched
    # User information in it is an error (RFC 9110 4.2.4): "evil@127.0.0.1" is no host.
    with pytest.raises(Refused) as refused:
        request_scope("GET", "1.1", b"http://evil@127.0.0.1/metrics", sent, where, "", {}, {})
    assert "may not carry user information" in refused.value.err.message
    # HTTP/1.0 may send no Host: the target's names the host all the same.
    bare = request_scope(
        "GET", "1.0", b"http://h.example/x", [(b"accept", b"*/*")], where, "", {}, {}
    )
    assert bare["headers"] == [(b"host", b"h.example"), (b"accept", b"*/*")]
    origin = request_scope("GET", "1.1", b"/v1/models", sent, where, "", {}, {})
    assert origin["headers"] is sent


def test_addresses_of_a_tls_ipv6_connection_and_of_none() -> None:
    ipv6 = Transport(peername=("::1", 5000, 0, 0), sockname=("::1", 443, 0, 0), sslcontext=object())
    tls = addresses(ipv6)  # type: ignore[arg-type]
    assert tls == Addresses(("::1", 5000), ("::1", 443), "https")
    assert tls.client_text() == "::1:5000"
    unix = addresses(Transport(peername="", sockname="/run/geogate.sock"))  # type: ignore[arg-type]
    assert unix == Addresses(None, None, "http") and unix.client_text() == "?"


@pytest.mark.parametrize(
    ("version", "headers", "refused"),
    [
        ("1.1", [(b"host", b"api.example.com:443")], None),
        ("1.1", [(b"host", b"[::1]:8080"), (b"transfer-encoding", b"Chunked ")], None),
        ("1.1", [(b"host", b"")], None),  # RFC 9112 3.2: a target without an authority
        ("1.0", [], None),
        ("1.1", [], RequestInvalid),
        ("1.1", [(b"host", b"a"), (b"host", b"a")], RequestInvalid),
        ("1.1", [(b"host", b"a b")], RequestInvalid),
        (
            "1.1",
            [(b"host", b"a"), (b"transfer-encoding", b"gzip, chunked")],
            TransferCodingUnsupported,
        ),
    ],
)
def test_check_framing_takes_one_host_and_chunked_alone(
    version: str, headers: list[tuple[bytes, bytes]], refused: type[Exception] | None
) -> None:
    if refused is None:
        check_framing(version, headers)
        return
    with pytest.raises(Refused) as got:
        check_framing(version, headers)
    assert type(got.value.err) is refused
