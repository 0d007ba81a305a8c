"""The engines beside uvicorn are given the config's settings: hypercorn keeps an idle
connection for server.keepalive_s (its own 5 s closed a balancer's pooled connections, on h2
with no GOAWAY), granian refuses headers past twice server.max_header_bytes before holding
them (its own limit was 16 MiB a request), and its factory is the one it imports."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from gateway import engines
from gateway.config import Config
from gateway.config_file import ENV_CONFIG_FILE
from gateway.http.gate import capacity

CFG: dict[str, Any] = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
    "server": {"keepalive_s": 75, "max_header_bytes": 8192, "port": 0},
}


def test_hypercorn_keeps_an_idle_connection_for_keepalive_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: list[Any] = []

    async def serve(app: object, hc: Any, shutdown_trigger: object) -> None:
        given.append(hc)

    monkeypatch.setattr("hypercorn.asyncio.serve", serve)
    engines.run_hypercorn(Config.model_validate(CFG), None)
    [hc] = given
    assert hc.keep_alive_timeout == 75
    assert hc.keep_alive_max_requests == 2**31


def test_granian_is_given_the_header_cap_and_an_importable_factory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given: dict[str, Any] = {}

    class Server:
        def __init__(self, target: str, **kwargs: Any) -> None:
            given.update(kwargs, target=target)

        def serve(self) -> None:
            pass

    monkeypatch.setattr("granian.server.Server", Server)
    monkeypatch.setenv(ENV_CONFIG_FILE, "")  # run_granian names the file there: restored after
    config_file = tmp_path / "gw.toml"
    config_file.write_text("")
    named = {**CFG, "server": {**CFG["server"], "host": "localhost"}}  # a name: its address
    engines.run_granian(Config.model_validate(named), config_file, capacity(1000, 400))
    assert given["address"] == "127.0.0.1"
    assert given["http2_settings"].max_headers_size == 2 * 8192
    assert given["http1_settings"].max_buffer_size == 2 * 8192
    module, name = given["target"].split(":")
    assert getattr(importlib.import_module(module), name) is engines.granian_app


def test_granian_gets_an_address_for_a_host_name() -> None:
    # granian takes IP literals only: server.host = "localhost" passed the start's own bind
    # (and --check) and then stopped granian with a traceback.
    assert engines.ip_literal("localhost") == "127.0.0.1"  # a name: IPv4, as server.bind
    assert engines.ip_literal("::1") == "::1" and engines.ip_literal("0.0.0.0") == "0.0.0.0"
