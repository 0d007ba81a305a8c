"""Timeouts follow what the client asked for, and a timed-out request that reached an upstream
is not run again elsewhere (unless retry.on_timeout): real gateways, real simulated backends.

The near backend takes 1 s to its first token; the gateway waits 0.5 s for a stream's first
byte. A far backend of the same model answers at once: it is where a failover would go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    gateway_toml,
    start_gateway,
    start_sim,
)

TIMEOUTS = "[timeouts]\nfirst_byte_s = 0.5\nresponse_s = 10\n"
STREAM = {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Sim, Sim]]:
    tmp = tmp_path_factory.mktemp("timeouts")
    slow = start_sim(tmp, "slow", "eu-central", ["m"], "--ttft-ms", "1000")
    far = start_sim(tmp, "far", "us-east", ["m"])
    try:
        yield tmp, slow, far
    finally:
        slow.proc.kill()
        far.proc.kill()


def _gateway(tmp: Path, slow: Sim, far: Sim, name: str, extra: str = "") -> Gateway:
    ups = [
        UpstreamSpec("slow", "eu-central", slow.url, ["m"]),
        UpstreamSpec("far", "us-east", far.url, ["m"]),
    ]
    # The client is in Frankfurt (the default location): "slow" is the nearer by far.
    return start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=TIMEOUTS + extra), name)


def _served_by(r: httpx.Response) -> str:
    return r.headers["geogate-route"].split("upstream=")[1].split(";")[0]


def test_non_streaming_request_waits_for_the_whole_answer(
    sims: tuple[Path, Sim, Sim],
) -> None:
    tmp, slow, far = sims
    gw = _gateway(tmp, slow, far, "gw-whole")
    try:
        before = int(str(far.stats()["requests"]))
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
        print("non-streaming:", r.status_code, r.headers.get("geogate-route"))
        assert r.status_code == 200, r.text
        assert _served_by(r) == "slow"  # 1 s to the answer is over first_byte_s, not response_s
        assert far.stats()["requests"] == before
    finally:
        gw.stop()


def test_stream_timeout_after_the_upstream_accepted_is_not_failed_over(
    sims: tuple[Path, Sim, Sim],
) -> None:
    tmp, slow, far = sims
    gw = _gateway(tmp, slow, far, "gw-stream")
    try:
        before = int(str(far.stats()["requests"]))
        r = httpx.post(f"{gw.url}/v1/completions", json=STREAM, timeout=10)
        err = r.json()["error"]
        print("streaming:", r.status_code, err["message"])
        assert r.status_code == 504 and err["code"] == "upstream_timeout"
        for words in ("slow", "timeouts.first_byte_s", "not sent to another upstream"):
            assert words in err["message"]
        assert far.stats()["requests"] == before  # ONE backend was tried
    finally:
        gw.stop()


def test_retry_on_timeout_opts_in_to_failover(sims: tuple[Path, Sim, Sim]) -> None:
    tmp, slow, far = sims
    gw = _gateway(tmp, slow, far, "gw-retry", "[retry]\non_timeout = true\n")
    try:
        before = int(str(far.stats()["requests"]))
        r = httpx.post(f"{gw.url}/v1/completions", json=STREAM, timeout=10)
        print("streaming, retry.on_timeout:", r.status_code, r.headers.get("geogate-route"))
        assert r.status_code == 200, r.text
        assert _served_by(r) == "far"
        assert far.stats()["requests"] == before + 1
    finally:
        gw.stop()
