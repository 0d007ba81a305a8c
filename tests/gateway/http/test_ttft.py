"""A stream's time to first byte is its first token's (geogate_time_to_first_byte_seconds,
stream="true": the TTFT objective's in deploy/prometheus), whether the server sends its role
chunk with the token (vLLM, the simulator) or at once; until that token, timeouts.first_byte_s
bounds the wait, not idle_s; a stream that got no token counts as slow. Real gateway, real
simulated backends, one region each so that each histogram is one backend's."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from gateway.cli.procs import free_port
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    gateway_toml,
    start_gateway,
    start_sim,
)

# idle_s well under the prefills below, first_byte_s over all but the stuck one's.
TIMEOUTS = "[timeouts]\nfirst_byte_s = 1.5\nidle_s = 0.4\n"
# model -> (its region, the sim's knobs, whether it sends its role chunk at once)
BACKENDS = {
    "vllm": ("eu-central", ("--ttft-ms", "300"), False),
    "early": ("us-east", ("--ttft-ms", "300"), True),
    "prefill": ("ap-southeast", ("--ttft-ms", "800", "--tokens-per-s", "50"), True),
    "stuck": ("sa-east", ("--ttft-ms", "5000"), True),
}


def _role_first(sim: Sim) -> None:
    req = urllib.request.Request(
        f"{sim.url}/sim/config", data=json.dumps({"role_first": True}).encode(), method="POST"
    )
    urllib.request.urlopen(req, timeout=5).read()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("ttft")
    sims: list[Sim] = []
    ups = []
    try:
        for model, (region, knobs, early) in BACKENDS.items():
            sims.append(start_sim(tmp, model, region, [model], *knobs))
            if early:
                _role_first(sims[-1])
            ups.append(UpstreamSpec(model, region, sims[-1].url, [model]))
        # Nothing listens there: refused at once (a 502, or a 503 once known down).
        dead = f"http://127.0.0.1:{free_port()}"
        ups.append(UpstreamSpec("gone", "eu-central", dead, ["gone"]))
        gateway = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=TIMEOUTS))
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        for sim in sims:
            sim.proc.kill()


def _buckets(gw: Gateway, region: str) -> dict[str, float]:
    """The stream="true" first-byte histogram of ``region``: le -> cumulative count."""
    text = httpx.get(f"{gw.ops_url}/metrics").text
    prefix = "geogate_time_to_first_byte_seconds_bucket{"
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and f'region="{region}"' in line and 'stream="true"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.split()[-1])
    return out


def _delta(gw: Gateway, region: str, before: dict[str, float]) -> dict[str, float]:
    after = _buckets(gw, region)
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def _stream(gw: Gateway, model: str, tokens: int = 4) -> tuple[httpx.Response, list[str]]:
    body = {"model": model, "max_tokens": tokens, "stream": True, "messages": [{"role": "user"}]}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=15)
    return r, [e for e in r.text.split("\n\n") if e.startswith("data: ")]


@pytest.mark.parametrize("model", ["vllm", "early"])
def test_a_streams_first_byte_is_timed_at_its_first_token(gw: Gateway, model: str) -> None:
    """300 ms to the first token: one stream lands in le="0.5", none in le="0.25", whether
    the role chunk came with the token or 300 ms ahead of it."""
    region = BACKENDS[model][0]
    before = _buckets(gw, region)
    r, events = _stream(gw, model)
    assert r.status_code == 200 and events[-1] == "data: [DONE]", r.text
    delta = _delta(gw, region, before)
    print(model, {le: delta[le] for le in ("0.1", "0.25", "0.5", "+Inf")})
    assert delta["0.25"] == 0 and delta["0.5"] == 1 and delta["+Inf"] == 1


def test_a_first_token_after_idle_s_but_within_first_byte_s_is_served_whole(gw: Gateway) -> None:
    # The role chunk at once, then 0.8 s of prefill: twice idle_s, within first_byte_s.
    r, events = _stream(gw, "prefill", tokens=8)
    assert r.status_code == 200, r.text
    assert events[-1] == "data: [DONE]" and "error" not in r.text, events[-3:]
    content = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert len([c for c in content if c]) == 8
    assert access_line(gw, r.headers["x-request-id"])["aborted"] is None


def test_no_first_token_within_first_byte_s_is_cut_and_counts_once(gw: Gateway) -> None:
    """The role chunk at once and no token for 5 s: cut at first_byte_s (1.5 s), with the
    error event; its time to first byte is its end, and it is counted once."""
    before = _buckets(gw, "sa-east")
    t0 = time.monotonic()
    r, events = _stream(gw, "stuck")
    took = time.monotonic() - t0
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "upstream_stream_interrupted" and "stuck" in err["message"], err
    assert 1.4 <= took < 4, took
    line = access_line(gw, r.headers["x-request-id"])
    assert (line["status"], line["aborted"]) == (200, "timeout"), line
    delta = _delta(gw, "sa-east", before)
    assert delta["1.0"] == 0 and delta["+Inf"] == 1, delta


def test_a_stream_that_failed_before_any_answer_counts_as_slow(gw: Gateway) -> None:
    """Refused in milliseconds, yet no token ever came: counted at first_byte_s (1.5 s), not
    at a few milliseconds, nor left out of the objective."""
    before = _buckets(gw, "eu-central")
    r, _ = _stream(gw, "gone")
    assert r.status_code in (502, 503), r.text
    assert r.elapsed.total_seconds() < 1.0
    delta = _delta(gw, "eu-central", before)
    assert delta["1.0"] == 0 and delta["2.5"] == 1, delta


def test_a_whole_answer_is_timed_apart_and_not_at_a_token(gw: Gateway) -> None:
    before = _buckets(gw, "eu-central")
    body = {"model": "vllm", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
    assert _delta(gw, "eu-central", before)["+Inf"] == 0
