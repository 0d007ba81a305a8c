"""Timeouts follow what the client asked for, and a timed-out request that reached an upstream
is not run again elsewhere (unless retry.on_timeout): real gateways, real simulated backends.

The near backend takes 1 s to its first token; the gateway waits 0.5 s for a stream's first
byte. A far backend of the same model answers at once: it is where a failover would go.

Past the first byte, a silence of idle_s is the upstream's failure, and total_s this gateway's
own limit, which is not; a connect that times out is a connection not made (502), not a late
answer (504).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    eventually,
    gateway_toml,
    get_json,
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


# idle_s 0.5 and total_s 1.2; one failed request ejects (whichever upstream: no share cap).
CUTS = "idle_s = 0.5\ntotal_s = 1.2\n[outlier]\nconsecutive_failures = 1\nmax_ejected_share = 1.0\n"


@pytest.fixture(scope="module")
def cuts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One model each: "steady" streams a token every 0.05 s (no silence near idle_s), as
    long as asked; "gappy" goes silent for 1 s after its first token; "late" answers whole
    after 1.5 s, past total_s."""
    tmp = tmp_path_factory.mktemp("cuts")
    knobs = {
        "long": ("steady", "--tokens-per-s", "20"),
        "gaps": ("gappy", "--tokens-per-s", "1"),
        "late": ("late", "--ttft-ms", "1500"),
    }
    sims = {m: start_sim(tmp, name, "eu-central", [m], *k) for m, (name, *k) in knobs.items()}
    ups = [UpstreamSpec(s.name, "eu-central", s.url, [m]) for m, s in sims.items()]
    gw = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=TIMEOUTS + CUTS), "gw-cut")
    try:
        yield gw
    finally:
        gw.stop()
        for sim in sims.values():
            sim.proc.kill()


def _upstream_row(gw: Gateway, uid: str) -> dict[str, Any]:
    table: Any = get_json(f"{gw.ops_url}/routing-table")
    rows = [u for region in table["regions"] for u in region["upstreams"]]
    row: dict[str, Any] = next(u for u in rows if u["id"] == uid)
    return row


def _aborted(gw: Gateway, cause: str, stream: str = "true") -> float:
    labels = f'cause="{cause}",region="eu-central",stream="{stream}"'
    prefix = f"geogate_stream_aborted_total{{{labels}}} "
    lines = httpx.get(f"{gw.ops_url}/metrics").text.splitlines()
    return sum(float(line[len(prefix) :]) for line in lines if line.startswith(prefix))


def _last_event(gw: Gateway, model: str, rid: str = "") -> dict[str, Any]:
    body = {"model": model, "prompt": "hi", "max_tokens": 200, "stream": True}
    headers = {"x-request-id": rid} if rid else {}
    r = httpx.post(f"{gw.url}/v1/completions", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    events = [e for e in r.text.split("\n\n") if e.startswith("data: {")]
    last: dict[str, Any] = json.loads(events[-1][len("data: ") :])
    print(model, len(events), "events, then:", last)
    return last


def test_a_stream_past_total_s_is_cut_by_the_gateways_limit_not_the_upstreams(
    cuts: Gateway,
) -> None:
    before = _aborted(cuts, "total_timeout")
    err = _last_event(cuts, "long")["error"]  # 200 tokens at 20 a second: 10 s asked
    assert err["code"] == "upstream_stream_interrupted"
    assert "limit of 1.2 s (timeouts.total_s)" in err["message"], err
    assert "stopped answering" not in err["message"]
    assert _aborted(cuts, "total_timeout") == before + 1
    steady = _upstream_row(cuts, "steady")
    assert steady["times_ejected"] == 0, steady  # one failure would have ejected it


def _cut_lines(gw: Gateway, rid: str) -> list[str]:
    eventually(lambda: f"request {rid} cut" in gw.log_text(), timeout=5, what="the cut's line")
    return [ln for ln in gw.log_text().splitlines() if rid in ln and '"rid"' not in ln]


def test_a_silence_of_idle_s_is_still_the_upstreams_failure(cuts: Gateway) -> None:
    before = _aborted(cuts, "timeout")
    err = _last_event(cuts, "gaps", rid="gappy-cut-1")["error"]
    assert err["code"] == "upstream_stream_interrupted"
    assert "upstream gappy stopped answering" in err["message"], err
    assert _aborted(cuts, "timeout") == before + 1
    gappy = _upstream_row(cuts, "gappy")
    assert gappy["times_ejected"] == 1, gappy
    # Its status is the head's 200: the access line says it was cut, and one warning says by
    # whom and why.
    line = access_line(cuts, "gappy-cut-1")
    assert (line["status"], line["aborted"], line["upstream"]) == (200, "timeout", "gappy")
    (cut,) = _cut_lines(cuts, "gappy-cut-1")
    assert " WARNING geogate: request gappy-cut-1 cut (upstream gappy, timeout): " in cut, cut


def test_a_body_that_begins_after_total_s_is_the_gateways_limit_too(cuts: Gateway) -> None:
    # A non-streaming answer within response_s (10 s) but after total_s (1.2 s), too big to
    # arrive in one read: the relay would start with its deadline already passed.
    before = [_aborted(cuts, "total_timeout", stream) for stream in ("true", "false")]
    body = {"model": "late", "max_tokens": 300_000, "messages": [{"role": "user", "content": "x"}]}
    rid = {"x-request-id": "late-cut-1"}
    with pytest.raises(httpx.HTTPError):  # a reset, not an answer that looks complete
        httpx.post(f"{cuts.url}/v1/chat/completions", json=body, headers=rid, timeout=10).read()
    # A whole answer, no stream: the cut-streams alert weighs stream="true" against streams.
    after = [_aborted(cuts, "total_timeout", stream) for stream in ("true", "false")]
    assert after == [before[0], before[1] + 1], (before, after)
    late = _upstream_row(cuts, "late")
    assert late["times_ejected"] == 0, late
    line = access_line(cuts, "late-cut-1")
    assert (line["status"], line["aborted"]) == (502, "total_timeout"), line
    (cut,) = _cut_lines(cuts, "late-cut-1")  # one line, as for an SSE stream
    assert "request late-cut-1 cut (upstream late, total_timeout): " in cut, cut


@pytest.fixture
def hole(tmp_path: Path) -> Iterator[tuple[Gateway, Sim]]:
    """A gateway whose one upstream answered its first health probe and then stopped taking
    connections (the next probe is a minute away): its port is a listener with a full accept
    queue, where the kernel drops SYNs, as a region that drops packets does."""
    sim = start_sim(tmp_path, "hole", "eu-central", ["m"])
    ups = [UpstreamSpec("hole", "eu-central", sim.url, ["m"])]
    extra = TIMEOUTS + "connect_s = 0.3\n"

    def toml(port: int) -> str:
        return gateway_toml(port, ups, extra=extra).replace("interval_s = 0.2", "interval_s = 60")

    gw = start_gateway(tmp_path, toml, "gw-hole")
    try:
        yield gw, sim
    finally:
        gw.stop()
        sim.proc.kill()


def test_a_connect_timeout_is_a_connection_not_made_not_a_late_answer(
    hole: tuple[Gateway, Sim],
) -> None:
    gw, sim = hole
    sim.proc.kill()
    sim.proc.wait()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", sim.port))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(4)]
    try:
        for c in fillers:
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", sim.port))
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
        err = r.json()["error"]
        print("connect timeout:", r.status_code, err["message"])
        assert r.status_code == 502 and err["code"] == "upstream_failed", err
        assert "hole (connect timed out)" in err["message"]
        assert "timeouts.response_s" not in err["message"]  # the answer was never awaited
    finally:
        for c in fillers:
            c.close()
        listener.close()
