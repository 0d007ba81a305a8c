"""Compressed request bodies: decoding rules (pure), and end to end, a client's body that does
not decode as declared is its own 400 and never costs the backend its place in rotation, and
one that does goes on decoded."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import httpx
import pytest

from gateway.defaults import INFLATE_MAX_MEMBERS, INFLATE_PIECE_BYTES
from gateway.errors import BodyTooLarge, RequestInvalid, UnsupportedEncoding
from gateway.http.encoding import decoded
from tests.support import UpstreamSpec, gateway_toml, start_gateway, start_sim

DOC = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (DOC, None),
        (DOC, ""),
        (DOC, "identity"),
        (gzip.compress(DOC, mtime=0), "gzip"),
        (gzip.compress(DOC, mtime=0), " GZIP "),
        (zlib.compress(DOC), "deflate"),
        (_raw_deflate(DOC), "deflate"),  # no zlib header, as some clients send it
    ],
)
def test_decodes_what_was_declared(body: bytes, coding: str | None) -> None:
    assert decoded(body, coding, 1000) == DOC


def test_gzip_members_are_joined() -> None:
    assert decoded(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"


def test_members_and_pieces_meet_anywhere() -> None:
    # Members of every size, ends falling inside the decoder's input pieces and across them.
    parts = [bytes([65 + i % 26]) * (i * 997 % 40_000) for i in range(1, 40)]
    body = b"".join(gzip.compress(p, compresslevel=0) for p in parts)  # stored: big members
    assert len(body) > 10 * INFLATE_PIECE_BYTES
    assert decoded(body, "gzip", 4 << 20) == b"".join(parts)
    many = gzip.compress(b"x") * INFLATE_MAX_MEMBERS
    assert decoded(many, "gzip", 4 << 20) == b"x" * INFLATE_MAX_MEMBERS


def test_a_body_of_too_many_gzip_members_is_refused() -> None:
    # 4 MB of 20-byte members held the event loop for 25 s: each member's end copied the
    # whole rest of the body. One more member than the limit is the client's 400.
    body = gzip.compress(b" ") * (INFLATE_MAX_MEMBERS + 1)
    with pytest.raises(RequestInvalid, match=f"over {INFLATE_MAX_MEMBERS} gzip members"):
        decoded(body, "gzip", 4 << 20)
    # A raised body limit allows bgzip's 64 KiB blocks of it: more members.
    assert decoded(body, "gzip", 64 << 20) == b" " * (INFLATE_MAX_MEMBERS + 1)


@pytest.mark.parametrize(
    ("body", "coding", "words"),
    [
        (DOC, "gzip", "not valid gzip data"),  # a plain body, declared gzip
        (gzip.compress(DOC, mtime=0)[:-6], "gzip", "ends early"),
        (b"", "gzip", "ends early"),
        (zlib.compress(DOC) + b"x", "deflate", "bytes follow"),
        (b"not deflate at all", "deflate", "not valid deflate data"),
    ],
)
def test_a_body_that_does_not_decode_is_the_clients_400(
    body: bytes, coding: str, words: str
) -> None:
    with pytest.raises(RequestInvalid, match=words) as info:
        decoded(body, coding, 1000)
    assert type(info.value) is RequestInvalid
    assert "Content-Encoding" in info.value.message


@pytest.mark.parametrize(
    ("body", "coding", "says"),
    [
        (gzip.compress(DOC, mtime=0), "x-gzip", "'x-gzip' is not supported"),  # gzip's old name
        (gzip.compress(DOC, mtime=0), "gzip, identity", "send one coding"),
        (gzip.compress(zlib.compress(DOC), mtime=0), "deflate, gzip", "send one coding"),
        (
            gzip.compress(gzip.compress(DOC, mtime=0), mtime=0),
            "gzip, gzip",
            "send one coding",
        ),  # two lines
    ],
)
def test_anything_but_one_coding_is_refused_before_a_backend_fails_on_it(
    body: bytes, coding: str, says: str
) -> None:
    # Sent on as they came, these got a 500 from a backend that decodes one coding (aiohttp),
    # counted as its failure: five such requests ejected a healthy backend.
    with pytest.raises(UnsupportedEncoding, match=says):
        decoded(body, coding, 1000)


def test_unknown_coding_is_unsupported_and_says_what_is() -> None:
    with pytest.raises(UnsupportedEncoding, match="'br'") as info:
        decoded(DOC, "gzip, br", 1000)
    assert "gzip" in info.value.accepted and "deflate" in info.value.accepted


def test_decoding_stops_at_the_body_limit() -> None:
    bomb = gzip.compress(b"0" * 10_000_000)  # ~10 KB that unpacks to 10 MB
    with pytest.raises(BodyTooLarge, match="max_body_bytes"):
        decoded(bomb, "gzip", 65536)
    assert decoded(gzip.compress(b"0" * 100), "gzip", 100) == b"0" * 100  # at the limit: fine


def test_plain_body_declared_gzip_is_a_400_and_the_backend_stays_in_rotation(
    tmp_path: Path,
) -> None:
    # Before the fix, five of these reached the backend, which answered 500 each time, and the
    # fifth ejected it: the next request went to the far backend.
    near = start_sim(tmp_path, "near", "eu-central", ["m"])
    far = start_sim(tmp_path, "far", "us-east", ["m"])
    ups = [
        UpstreamSpec("near", "eu-central", near.url, ["m"]),
        UpstreamSpec("far", "us-east", far.url, ["m"]),
    ]
    gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups))
    url = f"{gw.url}/v1/chat/completions"
    plain = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    try:
        with httpx.Client(timeout=10) as c:
            for _ in range(5):
                r = c.post(url, content=DOC, headers=plain)
                err = r.json()["error"]
                assert r.status_code == 400 and err["type"] == "invalid_request_error", r.text
                assert "not valid gzip data" in err["message"]
            print("plain body, gzip declared:", r.status_code, err["message"])
            assert near.stats()["requests"] == 0  # nothing reached the upstream
            r = c.post(url, content=DOC)
            print("next request:", r.status_code, r.headers["geogate-route"])
            assert r.status_code == 200
            assert "upstream=near; reason=lowest-score" in r.headers["geogate-route"]
            # A valid compressed body goes on decoded, without the header: vLLM (FastAPI)
            # decodes no request body, and its 400 for the gzip bytes was this request's.
            r = c.post(url, content=gzip.compress(DOC), headers=plain)
            assert r.status_code == 200 and "upstream=near" in r.headers["geogate-route"]
            seen = near.stats()["last_headers"]
            assert "Content-Encoding" not in seen, seen  # type: ignore[operator]
            assert seen["Content-Length"] == str(len(DOC))  # type: ignore[index]
            r = c.post(url, content=DOC, headers={"Content-Encoding": "br"})
            print("br:", r.status_code, r.headers.get("accept-encoding"), r.json())
            assert (
                r.status_code == 415 and r.json()["error"]["code"] == "unsupported_content_encoding"
            )
            assert r.headers["accept-encoding"] == "gzip, deflate, identity"
    finally:
        gw.stop()
        near.proc.kill()
        far.proc.kill()
