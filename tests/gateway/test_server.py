"""The server: HTTP/1.1, h2c with prior knowledge, TLS with ALPN h2, and draining on SIGTERM."""

from __future__ import annotations

import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from tests.support import Gateway, Sim, UpstreamSpec, gateway_toml, start_gateway, start_sim

BODY = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def _fleet(tmp: Path, *knobs: str, server_extra: str = "") -> tuple[Gateway, Sim]:
    sim = start_sim(tmp, "s", "eu-central", ["m"], *knobs)
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    gw = start_gateway(
        tmp, lambda p: gateway_toml(p, ups).replace("[server]", "[server]\n" + server_extra)
    )
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


def _stream_in_thread(url: str, out: list[str]) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                timeout=30,
                json={**BODY, "max_tokens": 10, "stream": True},
            ) as r:
                out.extend(r.iter_lines())
        except httpx.HTTPError as exc:
            out.append(f"ERROR {type(exc).__name__}")

    t = threading.Thread(target=run)
    t.start()
    return t


def test_sigterm_drains_streams_and_refuses_new_requests(tmp_path: Path) -> None:
    gw, sim = _fleet(tmp_path, "--tokens-per-s", "5")  # 10 tokens: a 2 s stream
    try:
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines)
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lines, "the stream never started"
        gw.proc.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not refused:
            try:
                httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=1)
            except httpx.ConnectError:
                refused = True
            time.sleep(0.02)
        assert refused, "new connections were still accepted while draining"
        t.join(15)
        assert "data: [DONE]" in lines, lines[-3:]  # the stream in flight finished
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()
        sim.proc.kill()


def test_drain_timeout_cuts_streams_that_run_too_long(tmp_path: Path) -> None:
    gw, sim = _fleet(tmp_path, "--tokens-per-s", "2", server_extra="drain_timeout_s = 1")
    try:
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines)  # 10 tokens at 2/s: 5 s, over the 1 s drain
        while not lines:
            time.sleep(0.01)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(10)
        t.join(10)
        assert time.monotonic() - t0 < 4
        assert "data: [DONE]" not in lines
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
