"""The engines beside uvicorn are given the config's settings: hypercorn keeps an idle
connection for server.keepalive_s (its own 5 s closed a balancer's pooled connections, on h2
with no GOAWAY), granian refuses headers past twice server.max_header_bytes before holding
them (its own limit was 16 MiB a request), and its factory is the one it imports. granian's
workers share one listening socket, which outlives any of them."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proc_cpu import stat_fields
from bench.workers import socket_inodes
from gateway import engines
from gateway.cli.procs import free_port
from gateway.config import Config
from gateway.config_file import ENV_CONFIG_FILE
from gateway.http.gate import capacity
from tests.support import (
    Gateway,
    UpstreamSpec,
    children,
    eventually,
    gateway_toml,
    read_to_eof,
    start_gateway,
)

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


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def _granian_twochildren(tmp: Path) -> Iterator[Gateway]:
    """A gateway on granian with two workers, serving /healthz; its upstream listens nowhere
    (the tests ask /healthz only, which needs none)."""
    ups = [UpstreamSpec("s", "eu-central", f"http://127.0.0.1:{free_port()}", ["m"])]
    gw = start_gateway(
        tmp,
        lambda port: gateway_toml(port, ups).replace(
            "[server]", '[server]\nengine = "granian"\nworkers = 2'
        ),
    )
    try:
        yield gw
    finally:
        gw.stop()


def _listening_on(port: int) -> set[str]:
    """The inodes of the sockets listening on 127.0.0.1:``port`` (/proc/net/tcp)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = f"0100007F:{port:04X}"
    return {f[9] for f in (r.split() for r in rows) if f[1] == local and f[3] == "0A"}


def _holds_listener(pid: int, port: int) -> bool:
    return bool(socket_inodes(pid) & _listening_on(port))


def _ask(sock: socket.socket) -> bytes:
    """The answer's status line, or how the connection failed."""
    try:
        sock.sendall(HEALTHZ)
        return read_to_eof(sock).split(b"\r\n", 1)[0]
    except OSError as exc:
        return repr(exc).encode()
    finally:
        sock.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_connections_queued_for_a_granian_worker_that_dies_are_served_by_the_other(
    tmp_path: Path,
) -> None:
    # granian 2.8 gives each worker, on Linux, a socket of its own (SO_REUSEPORT): the kernel
    # queued about half the new connections on each, and those a worker had not accepted yet
    # when it died (an OOM kill, a segfault) were reset. Here the victim is stopped first, so
    # that its share waits in a queue, as under load, where a queue is seldom empty.
    with _granian_twochildren(tmp_path) as gw:
        eventually(
            lambda: (
                len(ws := children(gw.proc.pid)) == 2
                and all(_holds_listener(w, gw.port) for w in ws)
            ),
            timeout=30,
            what="both workers listening",
        )
        victim = min(children(gw.proc.pid))
        os.kill(victim, signal.SIGSTOP)
        # Stopped, not about to be: one it accepted still would be lost with it, rightly.
        stopped = lambda: stat_fields(victim)[0] == "T"  # noqa: E731 - its state letter
        eventually(stopped, what="the victim stopped")
        # 16 connections: with a socket per worker, all 16 missing the victim's is 1 in 65,536
        socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(16)]
        os.kill(victim, signal.SIGKILL)
        answers = [_ask(s) for s in socks]
        assert answers == [b"HTTP/1.1 200 OK"] * 16, answers


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_connect_while_every_granian_worker_is_replaced_waits_and_is_served(
    tmp_path: Path,
) -> None:
    # With no worker listening (all died at once, or the first not yet up at the start, or the
    # only one up replaced: the -n 2 flake of the worker-replacement test in test_server),
    # the port refused connects: the main process held it bound but not listening.
    with _granian_twochildren(tmp_path) as gw:
        eventually(lambda: len(children(gw.proc.pid)) == 2, timeout=30, what="two workers")
        # Nor can a later process join the port (SO_REUSEPORT) and take a share of it.
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", gw.port))
        dead = children(gw.proc.pid)
        for pid in dead:
            os.kill(pid, signal.SIGKILL)
        eventually(lambda: not dead & children(gw.proc.pid), what="the workers reaped")
        # Before either replacement serves (they take a second or more to import the app).
        answer = _ask(socket.create_connection(("127.0.0.1", gw.port), timeout=30))
        assert answer == b"HTTP/1.1 200 OK", answer
        assert gw.proc.poll() is None
