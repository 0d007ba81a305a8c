"""bench/floor_proxy.py, the floor under geogate in bench/overhead.py (--peers floor-*): a fair
floor passes the backend's answer through unchanged, whole answers and event streams alike,
on each server it runs on (granian ASGI and RSGI, uvicorn)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.peers import FLOORS, start_floor
from gateway.cli.procs import free_port, stop, wait_http
from tests.support import Sim, start_sim

CHAT = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = start_sim(tmp_path_factory.mktemp("floor"), "floor", "eu-central", ["m"])
    yield s
    s.proc.terminate()
    s.proc.wait(10)


@pytest.mark.parametrize("target", sorted(FLOORS))
def test_the_floor_passes_answers_through(target: str, sim: Sim, tmp_path: Path) -> None:
    port = free_port()
    proc = start_floor(tmp_path, target, sim.port, port, [])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        whole = httpx.post(url, json=CHAT, timeout=10)
        assert whole.status_code == 200, whole.text
        assert whole.headers["content-type"].startswith("application/json")
        assert whole.json()["choices"][0]["message"]["content"]
        with httpx.stream("POST", url, json={**CHAT, "stream": True}, timeout=10) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[1][6:])["choices"][0]["delta"]["content"]
        missing = httpx.post(url, json={**CHAT, "model": "nope"}, timeout=10)
        assert missing.status_code == 404  # the backend's own answer, passed through
    finally:
        stop(proc)
