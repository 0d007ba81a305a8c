from __future__ import annotations

from gateway.http.headers import (
    client_response_headers,
    hops_of,
    request_id,
    upstream_request_headers,
)


def upstream_text(raw: list[tuple[bytes, bytes]], **kw: object) -> list[tuple[str, str]]:
    """upstream_request_headers' byte pairs (the client writes them as they are), as text."""
    out = upstream_request_headers(raw, **kw)  # type: ignore[arg-type]
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in out]


def via_balancer(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The upstream's headers for ``raw`` from the trusted balancer 10.0.0.5, whose client
    is 1.1.1.1."""
    kw = {"peer": "10.0.0.5", "client": "1.1.1.1", "peer_trusted": True}
    return dict(upstream_text(raw, **kw, scheme="http", rid="r1"))


def test_request_headers_drop_hop_by_hop_and_set_forwarding() -> None:
    raw = [
        (b"host", b"gw"),
        (b"connection", b"close, x-private"),
        (b"x-private", b"1"),
        (b"te", b"trailers"),
        (b"content-length", b"5"),
        (b"authorization", b"Bearer t"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-request-id", b"old"),
    ]
    # The peer 10.0.0.5 is a trusted balancer; the client it resolved to is 1.1.1.1.
    out = via_balancer(raw)
    assert out == {
        "authorization": "Bearer t",
        "X-Forwarded-For": "1.1.1.1, 10.0.0.5",  # the balancer's hop stays in the chain
        "X-Real-IP": "1.1.1.1",
        "X-Forwarded-Proto": "https",
        "X-Request-Id": "r1",
        "geogate-hops": "1",  # this gateway's pass (a loop's count: gateway.http.intake)
    }
    untrusted = dict(
        upstream_text(
            raw, peer="9.9.9.9", client="9.9.9.9", peer_trusted=False, scheme="http", rid="r1"
        )
    )
    assert untrusted["X-Forwarded-For"] == "9.9.9.9"
    assert untrusted["X-Forwarded-Proto"] == "http"


def test_empty_forwarded_for_elements_of_a_trusted_proxy_are_not_passed_on() -> None:
    # "X-Forwarded-For: ,," and an empty header went on as ",, 127.0.0.1": a backend reading
    # the first element as the client read an empty one.
    raw = [
        (b"x-forwarded-for", b" , 1.1.1.1,,"),
        (b"x-forwarded-for", b""),
        (b"X-Forwarded-For", b","),
    ]
    assert via_balancer(raw)["X-Forwarded-For"] == "1.1.1.1, 10.0.0.5"
    only_empty = upstream_text(
        [(b"x-forwarded-for", b"")],
        peer="10.0.0.5",
        client="10.0.0.5",
        peer_trusted=True,
        scheme="http",
        rid="r",
    )
    assert dict(only_empty)["X-Forwarded-For"] == "10.0.0.5"


def test_an_expectation_is_met_here_and_not_passed_on() -> None:
    # gateway.h1 answered 100-continue and read the body; passed on, "Expect: foo" had the
    # upstream answer 417, and 100-continue had it send a 100 for nothing.
    for value in (b"100-continue", b"foo", b"100-continue, foo"):
        out = upstream_text(
            [(b"Expect", value), (b"x-other", b"kept")],
            peer="9.9.9.9",
            client="9.9.9.9",
            peer_trusted=False,
            scheme="http",
            rid="r",
        )
        assert [n for n, _ in out if n.lower() == "expect"] == [] and ("x-other", "kept") in out


CLAIMS = [
    (b"X-Real-IP", b"6.6.6.6"),
    (b"Forwarded", b"for=6.6.6.6;proto=https"),
    (b"X-Forwarded-Host", b"admin.internal"),
    (b"X-Forwarded-Port", b"443"),
    (b"True-Client-IP", b"6.6.6.6"),
    (b"CF-Connecting-IP", b"6.6.6.6"),
    (b"X-Forwarded-Proto", b"https"),
]


def test_an_untrusted_clients_claims_about_itself_are_dropped() -> None:
    out = upstream_text(
        [*CLAIMS, (b"x-other", b"kept")],
        peer="9.9.9.9",
        client="9.9.9.9",
        peer_trusted=False,
        scheme="http",
        rid="r1",
    )
    assert out == [
        ("x-other", "kept"),
        ("X-Forwarded-For", "9.9.9.9"),
        ("X-Real-IP", "9.9.9.9"),
        ("X-Forwarded-Proto", "http"),
        ("X-Request-Id", "r1"),
        ("geogate-hops", "1"),
    ]


def test_a_trusted_proxys_claims_pass_but_x_real_ip_is_ours() -> None:
    out = dict(
        upstream_text(
            CLAIMS, peer="10.0.0.5", client="1.1.1.1", peer_trusted=True, scheme="http", rid="r"
        )
    )
    assert out["X-Real-IP"] == "1.1.1.1"  # the resolved client, never the header sent
    assert out["Forwarded"] == "for=6.6.6.6;proto=https"
    assert out["X-Forwarded-Host"] == "admin.internal"
    assert out["CF-Connecting-IP"] == "6.6.6.6"
    assert out["X-Forwarded-For"] == "10.0.0.5"
    assert out["X-Forwarded-Proto"] == "https"


def test_response_headers() -> None:
    raw = [  # names in lower case, as gateway.client keeps them
        (b"content-type", b"text/event-stream"),
        (b"transfer-encoding", b"chunked"),
        (b"server", b"x"),
        (b"x-request-id", b"upstream-made"),
        (b"geogate-preferred-region", b"us-east"),  # an upstream gateway's: not ours to tell
    ]
    out = client_response_headers(raw, [(b"x-request-id", b"r1")])
    assert out == [(b"content-type", b"text/event-stream"), (b"x-request-id", b"r1")]


def test_fields_named_in_connection_are_dropped_wherever_they_stand() -> None:
    """Connection's tokens are read in the filtering pass itself: a field named there is
    dropped whether it comes before or after the Connection header, from every Connection
    header of the message, in any case and spacing; nothing else is."""
    response = [
        (b"x-before", b"1"),
        (b"connection", b"X-Before ,keep-alive"),
        (b"content-type", b"text/event-stream"),
        (b"connection", b" x-after"),
        (b"x-after", b"2"),
        (b"x-kept", b"3"),
    ]
    out = client_response_headers(response, [(b"x-request-id", b"r1")])
    assert out == [
        (b"content-type", b"text/event-stream"),
        (b"x-kept", b"3"),
        (b"x-request-id", b"r1"),
    ]
    request = [
        (b"X-Before", b"1"),
        (b"Connection", b"x-before"),
        (b"connection", b"X-AFTER, x-forwarded-proto"),
        (b"x-after", b"2"),
        (b"x-kept", b"3"),
    ]
    sent = upstream_text(
        request, peer="9.9.9.9", client="9.9.9.9", peer_trusted=False, scheme="http", rid="r1"
    )
    assert sent == [
        ("x-kept", "3"),
        ("X-Forwarded-For", "9.9.9.9"),
        ("X-Real-IP", "9.9.9.9"),
        # Named in Connection or not, the forwarding headers are this gateway's own.
        ("X-Forwarded-Proto", "http"),
        ("X-Request-Id", "r1"),
        ("geogate-hops", "1"),
    ]


def test_request_id_kept_only_when_safe() -> None:
    for good in ("abc-123", "x" * 128, "01HZX3Q9.trace_id~1", "a!#$%&'*+-.^_`|~z"):
        assert request_id(good) == good
    bad = [
        "a b",
        'say "hi"',
        "caf\u00e9",
        "caf\u00c3\u00a9",
        "a\r\nforged: 1",
        "a\nb",
        "a,b",
        "x" * 129,
    ]
    for sent in (None, "", *bad):
        made = request_id(sent)
        assert len(made) == 32 and made != sent


def test_new_request_ids_are_uuid4_hex() -> None:
    import uuid

    made = {request_id(None) for _ in range(200)}
    assert len(made) == 200  # no repeats
    for rid in made:
        u = uuid.UUID(rid)
        assert u.hex == rid and u.version == 4 and u.variant == uuid.RFC_4122


def test_the_hop_count_is_ours_one_more_than_it_came_with() -> None:
    # A client's or a gateway's geogate-hops never passes as sent: the count goes on, one up.
    raw = [(b"geogate-hops", b"3"), (b"Geogate-Hops", b"0"), (b"x-kept", b"1")]
    out = upstream_text(raw, peer="9.9.9.9", client=None, peer_trusted=True, scheme="http", rid="r")
    assert [v for n, v in out if n.lower() == "geogate-hops"] == ["1"]  # hops not given: 0
    out = upstream_text(
        raw, peer="9.9.9.9", client=None, peer_trusted=False, scheme="http", rid="r", hops=3
    )
    assert [v for n, v in out if n.lower() == "geogate-hops"] == ["4"]
    assert [hops_of(v) for v in (None, "", "2", "007", "1234", "-1", "²", " 3", "x")] == [
        0, 0, 2, 7, 0, 0, 0, 0, 0,
    ]  # fmt: skip
