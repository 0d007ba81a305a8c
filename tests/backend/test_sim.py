"""The sim-backend's chat stream sends its role chunk with the first token, as vLLM does (a
proxy that times the first byte must not take the role chunk, sent before the prefill, for the
first token); ``role_first`` (POST /sim/config) sends it at once, as some servers do."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import httpx

from tests.support import Sim, start_sim

TTFT_S = 0.3


def _stream(sim: Sim) -> tuple[float, list[bytes]]:
    """One chat stream over a raw socket: when its role chunk arrived (seconds after the
    request was sent), and its body's HTTP chunks."""
    body = json.dumps(
        {"model": "m", "stream": True, "max_tokens": 2, "messages": [{"role": "user"}]}
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        got, role_at = b"", None
        while data := s.recv(1 << 16):
            got += data
            if role_at is None and b'"role": "assistant"' in got:
                role_at = time.monotonic() - t0
    assert role_at is not None, got
    rest = got.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while rest:
        size, rest = rest.split(b"\r\n", 1)
        n = int(size, 16)
        chunks.append(rest[:n])
        rest = rest[n + 2 :]
    return role_at, [c for c in chunks if c]


def test_the_role_chunk_goes_with_the_first_token(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "s", "eu-central", ["m"], "--ttft-ms", str(TTFT_S * 1000))
    try:
        role_at, chunks = _stream(sim)
        assert role_at >= TTFT_S - 0.02, role_at  # not before the prefill
        events = chunks[0].split(b"\n\n")  # one write: role, then the first token
        assert b'"role": "assistant"' in events[0] and b'"content": "the"' in events[1], chunks
        req = urllib.request.Request(
            f"{sim.url}/sim/config", data=json.dumps({"role_first": True}).encode(), method="POST"
        )
        assert json.loads(urllib.request.urlopen(req, timeout=5).read())["role_first"] is True
        role_at, chunks = _stream(sim)
        assert role_at < TTFT_S - 0.1, role_at  # at once, ahead of the prefill
        assert b'"content": "the"' not in chunks[0], chunks
    finally:
        sim.proc.kill()


def test_role_first_is_a_bool_or_refused(tmp_path: Path) -> None:
    """The string "false" was taken as true (a non-empty string): the role chunk went first."""
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    try:
        for bad in ("false", "true", 0, 1, None):
            r = httpx.post(f"{sim.url}/sim/config", json={"role_first": bad}, timeout=5)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["message"] == f"role_first: true or false, not {bad!r}"
        ok = httpx.post(f"{sim.url}/sim/config", json={"ttft_ms": 1}, timeout=5)
        assert ok.status_code == 200 and ok.json()["role_first"] is False  # none of them stuck
    finally:
        sim.proc.kill()
