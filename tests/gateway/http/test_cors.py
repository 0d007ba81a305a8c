"""CORS for browser apps, only where server.cors_origins allows: a preflight answered by the
gateway (never forwarded), an allowed origin's answers readable (a stream's too, whose body
goes by the splice), anything else as before."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config_file import load_config
from gateway.errors import ConfigError
from gateway.http.asgi import Message
from gateway.http.cors import Cors
from tests.gateway.http.test_splice import _stream_paths
from tests.support import (
    CHAT_BODY,
    Gateway,
    Sim,
    UpstreamSpec,
    gateway_toml,
    serving,
    start_gateway,
    start_sim,
)

APP = "https://app.example"
PREFLIGHT = {
    "origin": APP,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-stainless-os",
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cors")
    sim = start_sim(tmp, "s", "eu-central", ["m"], "--ttft-ms", "5", "--tokens-per-s", "200")
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    allow = f'[server]\ncors_origins = ["{APP}"]'
    g = start_gateway(tmp, lambda p: gateway_toml(p, ups).replace("[server]", allow, 1))
    sims: dict[str, Sim] = {"s": sim}
    with serving(g, sims):
        yield g


def test_a_preflight_from_an_allowed_origin_is_answered_here(gw: Gateway) -> None:
    r = httpx.options(f"{gw.url}/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 204, r.text
    h = r.headers
    assert h["access-control-allow-origin"] == APP and h["vary"] == "origin"
    assert h["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert h["access-control-allow-headers"] == PREFLIGHT["access-control-request-headers"]
    assert h["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in h  # a bearer token, not cookies
    # Another origin: the 405 any OPTIONS gets, which the browser takes as a refusal.
    other = httpx.options(
        f"{gw.url}/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"}
    )
    assert other.status_code == 405 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("engine", ["uvicorn", "granian", "hypercorn"])
def test_a_preflights_204_has_no_body_framing_and_keeps_its_connection(
    tmp_path: Path, engine: str
) -> None:
    """RFC 9110 8.6: a 204 carries no Content-Length (it said 0); nor a chunked body, on any
    engine, and the connection serves the next request."""
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    server = f'[server]\nengine = "{engine}"\ncors_origins = ["{APP}"]'
    g = start_gateway(tmp_path, lambda p: gateway_toml(p, ups).replace("[server]", server, 1))
    try:
        asked = "".join(f"{k}: {v}\r\n" for k, v in PREFLIGHT.items())
        preflight = f"OPTIONS /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{asked}\r\n"
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
            s.sendall(preflight.encode() + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\nok" not in got:  # the second answer's body
                part = s.recv(65536)
                assert part, got
                got += part
        head = got.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 204"), head
        assert b"content-length" not in head and b"transfer-encoding" not in head, head
        assert got.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200" in got
    finally:
        g.stop()
        sim.proc.kill()


def test_an_allowed_origins_stream_is_readable_and_whole(gw: Gateway) -> None:
    body = {**CHAT_BODY, "max_tokens": 8, "stream": True}
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=body, headers={"origin": APP}
    ) as r:
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in r.headers["access-control-expose-headers"]
        text = r.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", text
    tokens = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert len([t for t in tokens if t]) == 8, text
    assert _stream_paths(gw.ops_url).get("splice", 0) >= 1  # the body by the splice still
    # Errors too: a browser reads an error's JSON only with the header.
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "nope"}, headers={"origin": APP})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == APP
    # The OpenAI SDKs read x-should-retry: unexposed, a browser's reads none and retries a 5xx.
    exposed = r.headers["access-control-expose-headers"].split(", ")
    assert {"x-request-id", "retry-after", "x-should-retry", "geogate-route"} <= set(exposed)
    models = httpx.get(f"{gw.url}/v1/models", headers={"origin": APP})
    assert models.headers["access-control-allow-origin"] == APP


def test_without_an_origin_nothing_changes(gw: Gateway) -> None:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_any_origin_is_answered_with_a_star_and_headers_are_added_once() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"origin", b"https://x.example")]}
    wrapped = await Cors(("*",)).handle(scope, send)
    assert wrapped is not None and wrapped is not send
    await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
    await wrapped({"type": "http.response.body", "body": b"x"})
    assert sent[0]["headers"][:2] == [(b"a", b"1"), (b"access-control-allow-origin", b"*")]
    assert sent[1] == {"type": "http.response.body", "body": b"x"}
    # An upstream's own (vLLM's "*", a regional gateway's): replaced, not a second value,
    # which browsers refuse.
    theirs = [(b"Access-Control-Allow-Origin", b"*"), (b"access-control-max-age", b"5")]
    again = await Cors(("https://x.example",)).handle(scope, send)
    assert again is not None
    await again({"type": "http.response.start", "status": 200, "headers": theirs})
    assert [h for h in sent[2]["headers"] if h[0].lower().startswith(b"access-control-")] == [
        (b"access-control-allow-origin", b"https://x.example"),
        (b"access-control-expose-headers", sent[0]["headers"][-1][1]),
    ]
    none = await Cors(("https://y.example",)).handle(scope, send)
    assert none is send  # not allowed: the answer as it was


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("https://app.example/path", "without a path or credentials"),
        ("app.example", "use http:// or https://"),
        ("https://u:p@app.example", "without a path or credentials"),
    ],
)
def test_an_origin_no_browser_sends_is_refused_at_load(
    tmp_path: Path, origin: str, message: str
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        gateway_toml(1, []).replace("[server]", f'[server]\ncors_origins = ["{origin}"]')
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg, env={})
    assert "server.cors_origins[0]: " in str(info.value) and message in str(info.value)
