"""bench/paced_load.py, the streaming cells' client: it times the first content token (not the
role chunk the backend sends at once), over HTTP/1.1 and h2c, and counts failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.paced_load import DONE, H1Connection, PacedResult, Probe, run_paced
from tests.support import Sim, UpstreamSpec, eventually, gateway_toml, start_gateway, start_sim

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

TTFT_MS, TOKENS, TOKENS_PER_S = 80, 4, 50
BODY = json.dumps(
    {
        "model": "m",
        "max_tokens": TOKENS,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
).encode()
# The sim paces token i at TTFT + i / rate; the last of 4 comes 3 gaps after the first.
LAST_TOKEN_MS = TTFT_MS + (TOKENS - 1) * 1000 / TOKENS_PER_S
SLACK_MS = 250  # a shared 2-core machine: upper bounds are loose
EARLY_MS = 2  # uvloop rounds the sim's sleeps to whole ms, so a token may come ~1 ms early


@pytest.fixture
def paced_sim(tmp_path: Path) -> Iterator[Sim]:
    knobs = ("--ttft-ms", str(TTFT_MS), "--tokens-per-s", str(TOKENS_PER_S))
    sim = start_sim(tmp_path, "paced", "eu-central", ["m"], *knobs)
    yield sim
    sim.proc.terminate()
    sim.proc.wait(10)


def run(url: str, proto: str, conc: int) -> PacedResult:
    marks: list[int] = []
    res = asyncio.run(run_paced(url, proto, conc, BODY, 0.3, 1.0, lambda: marks.append(1)))
    assert len(marks) == 2, "marks() runs at both ends of the window"
    return res


def check_timings(res: PacedResult) -> None:
    assert not res.failures, res.failures
    assert len(res.ttft_ms) >= 4, res
    # The role chunk is written at once; a client that timed it would see ~1 ms here.
    assert all(TTFT_MS - EARLY_MS <= t < TTFT_MS + SLACK_MS for t in res.ttft_ms), res.ttft_ms
    last = LAST_TOKEN_MS - EARLY_MS
    assert all(last <= t < LAST_TOKEN_MS + SLACK_MS for t in res.total_ms), res.total_ms
    assert res.completed_in_window >= 4


def test_h1_times_first_content_token_and_end(paced_sim: Sim) -> None:
    check_timings(run(f"{paced_sim.url}/v1/chat/completions", "h1", 2))


def test_h2c_through_the_gateway(tmp_path: Path, paced_sim: Sim) -> None:
    ups = [UpstreamSpec("s", "eu-central", paced_sim.url, ["m"])]
    # h2c needs the granian engine (the default, uvicorn, speaks HTTP/1.1 only).
    gw = start_gateway(
        tmp_path,
        lambda port: gateway_toml(port, ups, origin="self").replace(
            "[server]", '[server]\nengine = "granian"'
        ),
    )
    try:
        eventually(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, what="ready")
        # 3 workers share one h2c connection: concurrent streams, one connection.
        check_timings(run(f"{gw.url}/v1/chat/completions", "h2c", 3))
    finally:
        gw.stop()


def test_failures_are_counted_not_timed(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "broken", "eu-central", ["m"], "--error-rate", "1")
    try:
        res = run(f"{sim.url}/v1/chat/completions", "h1", 1)
    finally:
        sim.proc.terminate()
        sim.proc.wait(10)
    assert set(res.failures) == {"HTTP 500"} and res.failures["HTTP 500"] > 0
    assert not res.ttft_ms and not res.total_ms and res.completed_in_window == 0


def test_chunked_body_split_anywhere() -> None:
    role = b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n'
    token = b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
    payload = role + token + DONE
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (role, token, DONE)) + b"0\r\n\r\n"
    for cut in range(1, len(wire)):
        conn = H1Connection("http://127.0.0.1:1/v1/chat/completions", b"{}")
        probe, conn.left = Probe(), -1
        got: list[bytes] = []

        def feed(data: bytes, now: float, probe: Probe = probe, got: list[bytes] = got) -> None:
            got.append(data)
            probe.feed(data, now)

        conn.feed = feed
        assert not conn._dechunk(wire[:cut], 1.0), cut  # the final CRLF is still to come
        assert conn._dechunk(wire[cut:], 2.0), cut
        assert b"".join(got) == payload, cut
        assert probe.tail == DONE and probe.first == (1.0 if cut >= wire.index(b"Hi") + 1 else 2.0)
        assert probe.sample("").failure == ""
    # A stream cut before [DONE] is a failure, even though the transport ended cleanly.
    probe = Probe()
    probe.feed(role + token, 1.0)
    assert probe.sample("").failure == "no [DONE] at the end"


def test_streams_count_by_their_share_of_life_in_the_window() -> None:
    # Streams started together end together: counting ends moves in steps of them as the
    # window's edges fall between two bursts. By share of life the count is the work done.
    from bench.paced_load import Sample, _summarise

    samples = [
        Sample(0.0, 1.0, 0.1, ""),  # wholly before the window
        Sample(0.5, 1.5, 0.1, ""),  # half inside
        Sample(1.2, 1.8, 0.1, ""),  # wholly inside
        Sample(1.9, 2.3, 0.1, ""),  # a quarter inside
        Sample(1.1, 1.3, 0.0, "reset"),  # failed: not counted
    ]
    res = _summarise(samples, 1.0, 2.0)
    assert res.completed_in_window == 3  # ends at 1.0, 1.5 and 1.8: a whole stream each
    assert abs(res.streams_in_window - 1.75) < 1e-9
