"""The server: HTTP/1.1, h2c with prior knowledge, TLS with ALPN h2, draining on SIGTERM, and
refusing to start on a port in use."""

from __future__ import annotations

import http.client
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli.procs import free_port, geogate_cmd, kill, spawn, stop, wait_http
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    eventually,
    gateway_toml,
    start_gateway,
    start_sim,
)

ENGINES = ["granian", "hypercorn"]  # both drain alike

BODY = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def _fleet(tmp: Path, *knobs: str, server_extra: str = "") -> tuple[Gateway, Sim]:
    sim = start_sim(tmp, "s", "eu-central", ["m"], *knobs)
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    try:
        gw = start_gateway(
            tmp, lambda p: gateway_toml(p, ups).replace("[server]", "[server]\n" + server_extra)
        )
    except BaseException:
        sim.proc.kill()  # a gateway that does not start leaves no backend behind
        raise
    return gw, sim


def test_http1_and_h2c_prior_knowledge(tmp_path: Path) -> None:
    gw, sim = _fleet(tmp_path)
    try:
        with httpx.Client() as c:
            r = c.post(f"{gw.url}/v1/chat/completions", json=BODY)
            assert (r.status_code, r.http_version) == (200, "HTTP/1.1")
        with httpx.Client(http1=False, http2=True) as c:  # prior knowledge, as h2load does
            rs = [c.post(f"{gw.url}/v1/chat/completions", json=BODY) for _ in range(3)]
            assert {(r.status_code, r.http_version) for r in rs} == {(200, "HTTP/2")}
    finally:
        gw.stop()
        sim.proc.kill()


def test_tls_with_alpn_h2(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"'
    port = free_port()
    cfg = tmp_path / "tls.toml"
    cfg.write_text(gateway_toml(port, ups).replace("[server]", "[server]\n" + tls))
    proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), tmp_path / "tls.log")
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        wait_http(f"{url}/healthz", proc=proc, context=ctx)
        with httpx.Client(http2=True, verify=ctx) as c:
            r = c.post(f"{url}/v1/chat/completions", json=BODY)
        assert (r.status_code, r.http_version) == (200, "HTTP/2")  # negotiated by ALPN
        with httpx.Client(verify=ctx) as c:
            r = c.post(f"{url}/v1/chat/completions", json=BODY)
        assert (r.status_code, r.http_version) == (200, "HTTP/1.1")
    finally:
        stop(proc)
        sim.proc.kill()


def _stream_in_thread(url: str, out: list[str], tokens: int = 10) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                timeout=30,
                json={**BODY, "max_tokens": tokens, "stream": True},
            ) as r:
                out.extend(r.iter_lines())
        except httpx.HTTPError as exc:
            out.append(f"ERROR {type(exc).__name__}")

    t = threading.Thread(target=run)
    t.start()
    return t


def _readyz(conn: http.client.HTTPConnection) -> tuple[int, str]:
    conn.request("GET", "/readyz")
    r = conn.getresponse()
    return r.status, r.read().decode()


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_drains_streams_while_readyz_answers_503(tmp_path: Path, engine: str) -> None:
    # 15 tokens at 5/s: a 3 s stream, in flight when SIGTERM arrives.
    gw, sim = _fleet(tmp_path, "--tokens-per-s", "5", server_extra=f'engine = "{engine}"')
    kept = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)  # a balancer's check
    try:
        assert _readyz(kept)[0] == 200
        assert kept.sock is not None
        local = kept.sock.getsockname()
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines, tokens=15)
        eventually(lambda: bool(lines), what="the stream to start")
        gw.proc.send_signal(signal.SIGTERM)
        # From the moment SIGTERM arrives, on the kept-alive connection and on new ones: the
        # balancer sees a draining target, not a dead one (before: connection refused).
        eventually(lambda: _readyz(kept)[0] == 503, timeout=2, what="503 on the kept connection")
        assert kept.sock is not None and kept.sock.getsockname() == local  # the same connection
        r = httpx.get(f"{gw.url}/readyz")  # a new connection
        assert (r.status_code, r.text) == (503, "draining")
        # The API still answers while the balancer catches up, as nginx and Envoy do.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=BODY).status_code == 200
        assert lines[-1:] != ["data: [DONE]"], "the stream ended before the checks: too slow"
        t.join(15)
        assert "data: [DONE]" in lines, lines[-3:]  # the stream in flight finished
        assert gw.proc.wait(10) == 0
        assert "drained: no request in flight" in gw.log_text()
    finally:
        kept.close()
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_drain_timeout_cuts_streams_that_run_too_long(tmp_path: Path, engine: str) -> None:
    gw, sim = _fleet(
        tmp_path,
        "--tokens-per-s",
        "2",
        server_extra=f'drain_timeout_s = 1\nengine = "{engine}"',
    )
    try:
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines)  # 10 tokens at 2/s: 5 s, over the 1 s drain
        eventually(lambda: bool(lines), what="the stream to start")
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(10)
        t.join(10)
        assert time.monotonic() - t0 < 4
        assert "data: [DONE]" not in lines
        assert "cutting 1 request(s) in flight" in gw.log_text()
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("taken", ["server", "ops"])
def test_a_port_in_use_stops_a_second_gateway_in_one_line(tmp_path: Path, taken: str) -> None:
    gw, sim = _fleet(tmp_path)
    try:
        ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
        port = gw.port if taken == "server" else free_port()
        ops_port = gw.ops_port if taken == "ops" else free_port()
        cfg = tmp_path / "second.toml"
        cfg.write_text(gateway_toml(port, ups) + f"\n[ops]\nport = {ops_port}\n")
        second = subprocess.Popen(
            geogate_cmd("gateway", "--config", str(cfg)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stderr = second.communicate(timeout=30)[1].decode()
        except subprocess.TimeoutExpired:
            kill(second)  # the whole group: granian's worker too
            raise AssertionError("a second gateway started on a port in use") from None
        busy = gw.port if taken == "server" else gw.ops_port
        assert second.returncode == 2, stderr
        assert stderr == (
            f"geogate: cannot listen on 127.0.0.1:{busy} ({taken}.port): "
            "address already in use (is another gateway running?)\n"
        )
        # The first gateway still serves, alone.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=BODY).status_code == 200
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize(
    "bad",
    [
        "[gateway]\nregion = 'mars'\n[[regions]]\nid='x'\nlatitude=0\nlongitude=0\n",
        "not toml at all [",
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, bad: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(bad)
    p = subprocess.run(
        geogate_cmd("gateway", "--config", str(cfg)), capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert str(cfg) in p.stderr
