"""A stream's time to first byte is its first token's (geogate_time_to_first_byte_seconds,
stream="true": the TTFT objective's in deploy/prometheus), whether the server sends its role
chunk with the token (vLLM, the simulator) or at once, and whether that token is content,
reasoning or a tool call; until that token, timeouts.first_byte_s bounds the wait, not idle_s;
a stream that got no token counts as slow, and one answered with a 4xx not at all
(gateway.http.ttft). Real gateway, real simulated backends, one region each so that each
histogram is one backend's, and a scripted upstream in this process for what the simulator
does not send (reasoning, tool calls, 4xx answers)."""

from __future__ import annotations

import contextlib
import http.server
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.cli.procs import free_port
from gateway.http.ttft import no_token_s
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    answer_whole,
    gateway_toml,
    serve_http,
    start_gateway,
    start_sim,
)

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

# idle_s well under the prefills below, first_byte_s over all but the stuck one's.
TIMEOUTS = "[timeouts]\nfirst_byte_s = 1.5\nidle_s = 0.4\n"
# model -> (its region, the sim's knobs, whether it sends its role chunk at once)
BACKENDS = {
    "vllm": ("eu-central", ("--ttft-ms", "300"), False),
    "early": ("us-east", ("--ttft-ms", "300"), True),
    "prefill": ("ap-southeast", ("--ttft-ms", "800", "--tokens-per-s", "50"), True),
    "stuck": ("sa-east", ("--ttft-ms", "5000"), True),
}


# The scripted upstream's region, shared with the "early" sim: each test reads the histogram's
# change over its own request, one at a time.
SCRIPTED_REGION = "us-east"
FIRST_S = 0.3  # its first generated field, after the role chunk sent at once


def _event(delta: dict[str, Any], finish: str | None = None, compact: bool = False) -> bytes:
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc, separators=(",", ":") if compact else None).encode()


def _call(arguments: str, head: bool = False) -> dict[str, Any]:
    """A tool call's delta: the first names the function (with no arguments yet), as vLLM's and
    OpenAI's do."""
    if head:
        call = {"index": 0, "id": "call_1", "type": "function"}
        return {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}


# model -> its stream: (seconds after the request, event). The role chunk at once, then the
# first generated field at FIRST_S: a reasoning model's thinking, whose content comes only at
# 0.9 s (vLLM's "reasoning_content", with JSON's blanks), and a tool call with no content at
# all, which ends at 0.7 s (compact, as OpenAI's). Timed on "content" alone, the first was
# timed at 0.9 s and the second at its end: both over le="0.5".
SCRIPTS = {
    "thinker": [
        (0.0, _event({"role": "assistant", "content": ""})),
        *((FIRST_S + i / 10, _event({"reasoning_content": f"step {i}"})) for i in range(6)),
        (0.9, _event({"content": "Sunny"})),
        (1.0, _event({}, "stop")),
    ],
    "caller": [
        (0.0, _event({"role": "assistant", "content": None}, compact=True)),
        (FIRST_S, _event(_call("", head=True), compact=True)),
        *(
            (0.4 + i / 10, _event(_call(a), compact=True))
            for i, a in enumerate(('{"ci', 'ty":', '"Oslo"}'))
        ),
        (0.7, _event({}, "tool_calls", compact=True)),
    ],
}


class _Scripted(http.server.BaseHTTPRequestHandler):
    """SCRIPTS' streams, each in its own thread and chunked as a model server's; "refuser"
    answers 422 with the request echoed in its body (FastAPI's validation error, the prompt's
    "content" in it), "full" 429 (at capacity)."""

    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the gateway closes what it will not reuse
            super().handle()

    def do_GET(self) -> None:  # /health, and the load poll's /metrics: nothing to report
        self._whole(200, b"" if self.path.startswith("/metrics") else b"ok")

    def do_POST(self) -> None:
        t0 = time.monotonic()
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req["model"] == "refuser":
            detail = [{"type": "missing", "loc": ["body", "x"], "msg": "required", "input": req}]
            self._whole(422, json.dumps({"detail": detail}).encode())
        elif req["model"] == "full":
            self._whole(429, b'{"error": {"message": "at capacity"}}', ("Retry-After", "1"))
        else:
            self._stream(SCRIPTS[req["model"]], t0)

    def _stream(self, script: list[tuple[float, bytes]], t0: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for at, event in [*script, (script[-1][0], b"data: [DONE]")]:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            data = event + b"\n\n"
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _whole(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        answer_whole(self, status, body, (("Content-Type", "application/json"), *headers))

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    with serve_http(_Scripted) as url:
        yield url


def _role_first(sim: Sim) -> None:
    req = urllib.request.Request(
        f"{sim.url}/sim/config", data=json.dumps({"role_first": True}).encode(), method="POST"
    )
    urllib.request.urlopen(req, timeout=5).read()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, scripted: str) -> Iterator[Gateway]:
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
        models = [*SCRIPTS, "refuser", "full"]
        ups.append(UpstreamSpec("scripted", SCRIPTED_REGION, scripted, models))
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
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    body = {"model": model, "max_tokens": tokens, "stream": True, "messages": messages}
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


@pytest.mark.parametrize("model", ["thinker", "caller"])
def test_reasoning_and_tool_calls_are_first_tokens(gw: Gateway, model: str) -> None:
    """The first generated field at 0.3 s: le="0.5" reads 1, be it reasoning (content at
    0.9 s) or a tool call (no content at all: the stream's end, 0.7 s, was its time)."""
    before = _buckets(gw, SCRIPTED_REGION)
    r, events = _stream(gw, model)
    assert r.status_code == 200 and events[-1] == "data: [DONE]", r.text
    assert "error" not in r.text and access_line(gw, r.headers["x-request-id"])["aborted"] is None
    delta = _delta(gw, SCRIPTED_REGION, before)
    print(model, {le: delta[le] for le in ("0.25", "0.5", "1.0", "+Inf")})
    assert delta["0.25"] == 0 and delta["0.5"] == 1 and delta["+Inf"] == 1


@pytest.mark.parametrize(("model", "status"), [("refuser", 422), ("full", 429)])
def test_a_stream_answered_with_a_4xx_is_left_out(gw: Gateway, model: str, status: int) -> None:
    """A model server's 4xx (its body echoing the prompt's "content", which is no token), or
    the gateway's 429 when every upstream is full: nothing was generated, so neither a fast
    first token (a few ms, as they were counted) nor a slow one."""
    before = _buckets(gw, SCRIPTED_REGION)
    r, _ = _stream(gw, model)
    assert r.status_code == status, r.text
    assert _delta(gw, SCRIPTED_REGION, before)["+Inf"] == 0


@pytest.mark.parametrize(
    ("status", "cut", "counted"),
    [
        (200, False, 0.2),  # a stream with nothing generated: its end
        (200, True, 1.5),  # cut before any token: first_byte_s at least
        (502, False, 1.5),  # failed before any byte reached the client, or a 5xx passed on
        (503, False, 1.5),
        (504, False, 1.5),
        (400, False, None),  # the client's request, refused by the model server
        (404, False, None),
        (422, True, None),
        (429, False, None),  # every upstream tried at capacity (UpstreamBusy)
    ],
)
def test_what_a_stream_with_no_token_counts_as(
    status: int, cut: bool, counted: float | None
) -> None:
    assert no_token_s(status, 0.2, 1.5, cut) == counted


def test_a_loops_508_is_left_out_as_a_4xx_is() -> None:
    # A client's own geogate-hops can make one: no model was asked, nothing was slow.
    assert no_token_s(508, 0.003, 60.0) is None
    assert no_token_s(502, 0.003, 60.0) == 60.0  # a failure still counts as slow
