"""The /v1 proxy end to end: a real gateway process in front of real simulated backends."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvloop

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from gateway.config_file import load_config
from gateway.defaults import MAX_HOPS
from gateway.http.app import create_app
from gateway.http.asgi import Message
from gateway.http.dispatch import GatewayApp
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    eventually,
    gateway_toml,
    get_json,
    read_to_eof,
    serving,
    start_gateway,
    start_sim,
    with_ops_port,
)

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, Sim]]]:
    tmp = tmp_path_factory.mktemp("proxy")
    sims = {
        "fast": start_sim(tmp, "fast", "eu-central", ["m"]),
        "tick": start_sim(tmp, "tick", "eu-central", ["tick"], "--tokens-per-s", "5", "--stamp"),
        "slow": start_sim(tmp, "slow", "eu-central", ["slow"], "--ttft-ms", "3000"),
        "flaky": start_sim(
            tmp, "flaky", "eu-central", ["flaky"], "--error-rate", "1", "--error-status", "502"
        ),
        "dies": start_sim(
            tmp, "dies", "eu-central", ["dies"], "--abort-after", "3", "--tokens-per-s", "50"
        ),
    }
    ups = [
        UpstreamSpec(n, s.region, s.url, [m])
        for n, s, m in [
            ("fast", sims["fast"], "m"),
            ("tick", sims["tick"], "tick"),
            ("slow", sims["slow"], "slow"),
            ("flaky", sims["flaky"], "flaky"),
            ("dies", sims["dies"], "dies"),
        ]
    ]
    ups.append(UpstreamSpec("gone", "us-east", f"http://127.0.0.1:{free_port()}", ["gone"]))
    gw = start_gateway(
        tmp,
        lambda port: gateway_toml(port, ups).replace(
            "[health]",
            f"max_body_bytes = {MAX_BODY}\n"
            'extra_api_paths = ["/v1/echo"]\n\n'  # the sim's: it answers with what it got
            "[timeouts]\nfirst_byte_s = 1\n\n[health]",
        ),
    )
    with serving(gw, sims) as both:
        yield both


def chat(model: str, **kw: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_non_streaming_roundtrip_with_openai_client(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    out = raw.parse()
    assert out.choices[0].message.content == "the quick geo gate routes"
    assert out.usage is not None and out.usage.completion_tokens == 5
    route = raw.headers["geogate-route"]
    assert "upstream=fast" in route and "region=eu-central" in route


def test_streaming_with_openai_client(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick geo gate"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_sse_events_arrive_as_emitted(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    """The upstream emits an event every 200 ms; each must reach us before the next is sent:
    an event held back until more bytes come (a buffering proxy) lags by 200 ms or more.
    150 ms, not tighter: this test is not serial, and shares a loaded machine."""
    gw, _ = fleet
    lags = []
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json=chat("tick", max_tokens=6, stream=True),
        timeout=10,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(": t="):
                lags.append(time.time() - float(line[4:]))
    assert len(lags) == 8  # role chunk, 6 tokens, finish chunk
    assert max(lags) < 0.150, f"event lags (s): {lags}"


def test_client_disconnect_cancels_upstream(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, sims = fleet
    before: Any = sims["tick"].stats()["cancelled"]  # a count, in the sim's JSON
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json=chat("tick", max_tokens=50, stream=True),
        timeout=10,
    ) as r:
        rid = r.headers["x-request-id"]
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(x.startswith("data: ") for x in got)
    # Leaving the block closed our connection mid-stream; the upstream must see it.
    eventually(
        lambda: sims["tick"].stats()["cancelled"] == before + 1,
        timeout=5,
        what="the upstream to observe the cancellation",
    )
    assert sims["tick"].stats()["active"] == 0
    # The access line of a stream its client left names the upstream that was serving it.
    doc = access_line(gw, rid)
    assert (doc["status"], doc["upstream"], doc["region"]) == (499, "tick", "eu-central"), doc


def test_a_chunked_requests_trailer_fields_are_not_forwarded_as_headers(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    gw, _ = fleet
    body = b'{"model": "m"}'
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"%x\r\n%b\r\n0\r\nX-Trailer-Field: smuggled\r\n\r\n" % (len(body), body)
        )
        answer = read_to_eof(s)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"x-trailer-field" not in rest.lower()  # the echo of the headers it got


def test_forwarding_headers(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    r = httpx.post(
        f"{gw.url}/v1/echo",
        json={"model": "m"},
        headers={
            "X-Request-Id": "req-42",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "6.6.6.6",
            "Authorization": "Bearer k",
        },
    )
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen["x-request-id"] == "req-42"
    assert r.headers["x-request-id"] == "req-42"
    # Not from a trusted proxy: the forged chain is replaced by the real peer.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["authorization"] == "Bearer k"
    for hop in ("keep-alive", "x-secret"):
        assert hop not in seen


def test_access_line_counts_the_bytes_the_client_got(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    """The access line's bytes and time to first byte, on each way an answer leaves: a stream
    (the splice), the gateway's own error answer, and a stream cut by its upstream (the
    final error event counts)."""
    gw, _ = fleet
    url = f"{gw.url}/v1/chat/completions"
    cases = [
        (chat("tick", stream=True, max_tokens=3), 200),
        (chat("no-such-model"), 404),
        (chat("dies", stream=True, max_tokens=10), 200),
    ]
    for body, status in cases:
        with httpx.stream("POST", url, json=body, timeout=30) as r:
            got = b"".join(r.iter_raw())
        assert r.status_code == status
        doc = access_line(gw, r.headers["x-request-id"])
        assert (doc["status"], doc["bytes"]) == (status, len(got)), body["model"]
        assert doc["ttfb_ms"] is not None and 0 <= doc["ttfb_ms"] <= doc["ms"]
    assert b"data: [DONE]" not in got and b"error" in got  # the cut stream's error event
    # The cut stream's line still names the upstream that served it, and its region.
    assert doc["upstream"] != "-" and doc["region"] is not None, doc


def test_request_id_generated_and_logged(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("m"))
    rid = r.headers["x-request-id"]
    assert len(rid) == 32

    doc = access_line(gw, rid)
    assert (doc["model"], doc["status"], doc["bytes"]) == ("m", 200, len(r.content))
    assert doc["region"] == r.headers["geogate-route"].split("region=")[1].split(";")[0]
    assert 0 < doc["ttfb_ms"] <= doc["ms"]
    bad = httpx.post(
        f"{gw.url}/v1/chat/completions", json=chat("m"), headers={"X-Request-Id": "x" * 500}
    )
    assert bad.headers["x-request-id"] != "x" * 500  # too long for a log: replaced


def assert_openai_error(r: httpx.Response, status: int, code: str, *words: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    for w in words:
        assert w in err["message"], err["message"]
    return str(err["message"])


def test_body_over_limit_is_413(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    body = json.dumps(chat("m", padding="x" * (MAX_BODY + 1)))
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=body)
    assert_openai_error(r, 413, "request_too_large", str(MAX_BODY), "max_body_bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    r = httpx.post(f"{gw.url}/v1/chat/completions", content=chunks())
    assert_openai_error(r, 413, "request_too_large")


def test_malformed_json_and_missing_model_are_400(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=b'{"model": "m",')
    assert_openai_error(r, 400, "invalid_request", "not valid JSON", "line 1")
    assert r.json()["error"]["param"] is None
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": []})
    assert_openai_error(r, 400, "invalid_request", '"model"')
    assert r.json()["error"]["param"] == "model"  # the field at fault, as OpenAI names it
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=["m"])
    assert_openai_error(r, 400, "invalid_request", "must be a JSON object, not an array")


def test_unknown_model_is_404(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("gpt-17"))
    assert_openai_error(r, 404, "model_not_found", "gpt-17", "/v1/models")
    assert r.json()["error"]["param"] == "model"
    assert r.headers["geogate-route"] == "outcome=model_not_found"  # routed, nothing tried


def test_nothing_healthy_is_503_with_retry_after(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet

    def marked_down() -> bool:
        table: Any = get_json(f"{gw.ops_url}/routing-table")
        return not table["regions"][1]["healthy"]

    eventually(marked_down, what="probes to mark the dead upstream down")
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("gone"))
    assert_openai_error(r, 503, "no_healthy_upstream", "gone")
    assert int(r.headers["retry-after"]) > 0
    # The panic path tried the unhealthy one anyway: the header names it.
    route = r.headers["geogate-route"]
    assert route == "outcome=failed; region=us-east; upstream=gone; attempts=1", route


def test_upstream_failure_is_502(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("flaky"))
    assert_openai_error(r, 502, "upstream_failed", "flaky", "HTTP 502")
    # What was tried, as a served answer's route header says what served it.
    route = r.headers["geogate-route"]
    assert route == "outcome=failed; region=eu-central; upstream=flaky; attempts=1", route


def test_upstream_timeout_is_504(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    # A stream's first byte is its first token (a completion stream: no role chunk ahead of
    # it), due in 3 s; first_byte_s is 1 s. A non-streaming request waits for response_s.
    body = {"model": "slow", "prompt": "hi", "stream": True}
    r = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=10)
    assert_openai_error(r, 504, "upstream_timeout", "timeouts.first_byte_s")
    # The access line names the upstream that timed out, though none served the request, and
    # its region, as the metrics label the failure (it said null).
    doc = access_line(gw, r.headers["x-request-id"])
    assert (doc["status"], doc["upstream"], doc["region"]) == (504, "slow", "eu-central"), doc
    route = r.headers["geogate-route"]
    assert route == "outcome=failed; region=eu-central; upstream=slow; attempts=1", route


def test_a_client_gone_before_the_answer_names_the_upstream_at_work(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    # A non-streaming request waits for the whole answer: its client left while "slow" was
    # still working on it. The line said upstream "-" and region null, the metrics eu-central.
    gw, _ = fleet
    rid = "left-while-slow-works"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{gw.url}/v1/completions",
            json={"model": "slow", "prompt": "hi"},
            headers={"x-request-id": rid},
            timeout=0.5,
        )
    doc = access_line(gw, rid)  # waits for the line
    assert (doc["status"], doc["upstream"], doc["region"]) == (499, "slow", "eu-central"), doc


def test_the_sdk_does_not_run_again_what_the_gateway_would_not(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    # The OpenAI SDKs retry a 5xx twice unless the answer says x-should-retry: false: the
    # 504 of an upstream that accepted the work, not failed over so as not to run it twice,
    # was run three times by a client at its defaults.
    gw, sims = fleet
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")  # max_retries: 2
    before = sims["slow"].stats()["requests"]
    assert isinstance(before, int)
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="slow", prompt="hi", stream=True, timeout=30)
    assert e.value.status_code == 504
    assert e.value.response.headers["x-should-retry"] == "false"
    assert sims["slow"].stats()["requests"] == before + 1
    # A 502 (no upstream could have started the work) leaves the SDK its retries.
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("flaky"))
    assert r.status_code == 502 and "x-should-retry" not in r.headers


def test_backend_dying_mid_stream_gives_an_error_event(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    gw, _ = fleet
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="dies", messages=[{"role": "user", "content": "hi"}], max_tokens=10, stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match="incomplete"):
        for c in stream:
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "the quick geo"  # what arrived before the failure was kept


def test_models_lists_healthy_union(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    eventually(
        lambda: "gone" not in str(get_json(f"{gw.url}/v1/models")),
        what="the dead upstream's model to leave /v1/models",
    )
    models: Any = get_json(f"{gw.url}/v1/models")
    ids = {m["id"] for m in models["data"]}
    assert {"m", "tick", "slow", "dies"} <= ids
    assert "gone" not in ids
    one = httpx.get(f"{gw.url}/v1/models/m", headers={"x-request-id": "mine-1"})
    assert one.status_code == 200 and one.json()["id"] == "m"
    assert one.headers["x-request-id"] == "mine-1"  # the SDKs' _request_id, as on every /v1
    assert len(httpx.get(f"{gw.url}/v1/models").headers["x-request-id"]) == 32
    assert_openai_error(httpx.get(f"{gw.url}/v1/models/nope"), 404, "model_not_found")
    # Served here, by no healthy upstream now: the 503 a request gets, not a 404, which the
    # SDKs raise as NotFoundError, the model gone for good.
    down = httpx.get(f"{gw.url}/v1/models/gone")
    assert_openai_error(down, 503, "no_healthy_upstream", "no healthy, undrained upstream")
    assert down.headers["retry-after"] == "5" and "x-request-id" in down.headers


def test_the_model_list_and_cards_get_access_lines(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    # They had none, and no count: a client polling models.retrieve through an outage got
    # 503s no operator could see.
    gw, _ = fleet
    for path, rid, status in [
        ("/v1/models", "list-1", 200),
        ("/v1/models/m", "card-1", 200),
        ("/v1/models/nope", "card-2", 404),
        ("/v1/models/gone", "card-3", 503),
    ]:
        r = httpx.get(f"{gw.url}{path}", headers={"x-request-id": rid})
        assert r.status_code == status, r.text
        doc = access_line(gw, rid)
        assert (doc["path"], doc["status"]) == (path, status), doc
        assert doc["bytes"] == len(r.content) and doc["client"] == "127.0.0.1", doc
    # A request id the client did not send (or sent invalid): the answer's is the line's.
    r = httpx.get(f"{gw.url}/v1/models", headers={"x-request-id": "not valid!"})
    assert access_line(gw, r.headers["x-request-id"])["path"] == "/v1/models"
    # Another method finds the proxy, as before: its 405, logged.
    r = httpx.post(f"{gw.url}/v1/models", headers={"x-request-id": "post-1"})
    assert r.status_code == 405 and access_line(gw, "post-1")["status"] == 405


def test_unknown_paths_get_openai_errors(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    assert_openai_error(httpx.get(f"{gw.url}/nope"), 404, "unknown_url", "/v1/")
    assert_openai_error(httpx.get(f"{gw.url}/v1/files"), 404, "unknown_url")


def first_bytes(text: str, stream: str) -> float:
    """geogate_time_to_first_byte_seconds_count for eu-central's ``stream`` label."""
    name = f'geogate_time_to_first_byte_seconds_count{{region="eu-central",stream="{stream}"}}'
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name)), 0.0)


def test_metrics_and_readiness(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    before = httpx.get(f"{gw.ops_url}/metrics").text
    httpx.post(f"{gw.url}/v1/chat/completions", json=chat("m"))
    text = httpx.get(f"{gw.ops_url}/metrics").text
    assert 'geogate_requests_total{code="200",region="eu-central"}' in text
    # A whole answer's first byte is counted apart from a stream's (the TTFT objective's).
    assert first_bytes(text, "false") == first_bytes(before, "false") + 1
    assert first_bytes(text, "true") == first_bytes(before, "true")
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=chat("m") | {"stream": True}
    ) as r:
        r.read()
    after = httpx.get(f"{gw.ops_url}/metrics").text
    assert first_bytes(after, "true") == first_bytes(text, "true") + 1
    assert 'geogate_upstream_healthy{region="us-east",upstream="gone"} 0.0' in text
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    params = {"model": "m", "ip": "127.0.0.1"}
    explain = httpx.get(f"{gw.ops_url}/explain", params=params).json()
    assert explain["decision"]["candidates"][0]["upstream"] == "fast"


def test_streams_cut_mid_way_count_as_failures_and_eject(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    # A cut SSE stream answered 200 at the start: it must count as the upstream's failure
    # only, not also as a success that resets the run of consecutive failures. Last in this
    # file on purpose: it leaves "dies" ejected for the module's gateway.
    gw, _ = fleet
    body = {
        "model": "dies",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    for _ in range(5):  # outlier.consecutive_failures, the default
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=10) as r:
            assert "incomplete" in r.read().decode()
    table: Any = get_json(f"{gw.ops_url}/routing-table")
    dies = next(u for reg in table["regions"] for u in reg["upstreams"] if u["id"] == "dies")
    assert dies["times_ejected"] == 1, dies


def test_a_serving_worker_keeps_its_start_up_heap_out_of_the_collector(tmp_path: Path) -> None:
    # In process: what the start-up made is frozen while the app serves (gc.freeze), and
    # handed back to the collector when it stops. The runtime knows the worker's loop and
    # thread meanwhile (Runtime.current_task gives it to asyncio), and forgets it after.
    conf = tmp_path / "gateway.toml"
    up = UpstreamSpec("a", "eu-central", f"http://127.0.0.1:{free_port()}", ["m"])
    conf.write_text(gateway_toml(free_port(), [up]))
    app = create_app(load_config(conf))
    assert isinstance(app, GatewayApp)  # its proxy (the stream gate) holds the runtime
    rt = app.proxy.rt
    seen: list[int] = []
    loops: list[bool] = []

    async def run() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: Message) -> None:
            assert not message["type"].endswith(".failed"), message
            seen.append(gc.get_freeze_count())
            here = rt.loop is asyncio.get_running_loop() and rt.loop_thread == threading.get_ident()
            loops.append(here)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    assert gc.get_freeze_count() == 0 and rt.loop is None
    uvloop.run(run())
    assert seen[0] > 1000  # at startup.complete: the app, its config, the modules behind them
    assert seen[-1] == 0 and gc.get_freeze_count() == 0
    assert loops == [True, False] and rt.loop is None  # set while serving, cleared at the end


async def test_readyz_and_models_tell_drained_from_down() -> None:
    # In process: /readyz said "no healthy upstream" of upstreams an operator drained, and
    # /v1/models/{id} a 404 (NotFoundError in the SDKs) of a model served here, though by
    # nothing routable now.
    from starlette.applications import Starlette

    from gateway.config import Config
    from gateway.http.endpoints import Endpoints
    from gateway.http.intake import Proxy
    from gateway.runtime import build_runtime

    ups = [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}]
    rt = build_runtime(
        Config.model_validate(
            {
                "gateway": {"region": "eu"},
                "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
                "upstreams": ups,
            }
        )
    )
    app = Starlette(routes=Endpoints(rt).routes(Proxy(rt).recorded))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        assert (await c.get("/readyz")).text == "ready: 1 healthy upstream(s)"
        await rt.store.update_upstream("a", {"drained": True}, "test")
        r = await c.get("/readyz")
        assert (r.status_code, r.text) == (
            503,
            "not ready: no healthy, undrained upstream (1 healthy but drained)",
        )
        assert (await c.get("/v1/models")).json()["data"] == []
        r = await c.get("/v1/models/m")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "no_healthy_upstream")
        r = await c.get("/v1/models/other")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")


def test_two_gateways_that_list_each_other_refuse_the_loop(tmp_path: Path) -> None:
    # Each forwards to the other: one request became thousands, to the stream limit (a review
    # counted 9,639 in 3 s). geogate-hops counts the passes; at MAX_HOPS the loop is a 508.
    a_port, b_port = free_port(), free_port()
    while b_port == a_port:
        b_port = free_port()
    procs = []
    try:
        for name, port, other in (("a", a_port, b_port), ("b", b_port, a_port)):
            up = UpstreamSpec(f"to-{name}", "eu-central", f"http://127.0.0.1:{other}", ["m"])
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(with_ops_port(gateway_toml(port, [up]), 0))
            procs.append(spawn(geogate_cmd("gateway", "--config", str(cfg)), tmp_path / name))
        for port, proc in zip((a_port, b_port), procs, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"http://127.0.0.1:{a_port}/v1/chat/completions", json=body, timeout=20)
        assert_openai_error(r, 508, "loop_detected", "came through 8 gateways")
        assert r.headers["x-should-retry"] == "false"
        # MAX_HOPS + 1 passes in all (hops 0 to 8), not one per stream the workers could hold.

        def passes() -> int:
            return sum(
                '"path":"/v1/chat/completions"' in ln.replace(" ", "")
                for name in "ab"
                for ln in (tmp_path / name).read_text().splitlines()
            )

        eventually(lambda: passes() >= MAX_HOPS + 1, timeout=5, what="the passes' access lines")
        time.sleep(0.5)  # a line more would be flushed by now (ACCESS_LOG_FLUSH_S)
        assert passes() == MAX_HOPS + 1
    finally:
        for proc in procs:
            stop(proc)


def test_a_clients_hop_count_does_not_make_its_gateway_fail_the_next(tmp_path: Path) -> None:
    # An edge gateway in front of a regional one: a client's own geogate-hops: 7 made the
    # regional gateway answer 508, which the edge counted as that upstream failing: five such
    # requests ejected it for 30 s, and each stream counted as a slow first token.
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    regional = start_gateway(
        tmp_path, lambda p: gateway_toml(p, [UpstreamSpec("s", "eu-central", sim.url, ["m"])])
    )
    up = UpstreamSpec("regional", "eu-central", regional.url, ["m"])
    edge = start_gateway(tmp_path, lambda p: gateway_toml(p, [up]), name="edge")
    try:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(6):
            r = httpx.post(
                f"{edge.url}/v1/chat/completions", json=body, headers={"geogate-hops": "7"}
            )
            assert r.status_code == 508, r.text
        table: Any = get_json(f"{edge.ops_url}/routing-table")
        [view] = [u for reg in table["regions"] for u in reg["upstreams"]]
        assert view["times_ejected"] == 0 and not view.get("ejected_s"), view
        metrics = httpx.get(f"{edge.ops_url}/metrics").text
        slow = re.findall(
            r'^geogate_time_to_first_byte_seconds_count\{[^}]*stream="true"[^}]*\} (\S+)$',
            metrics,
            re.M,
        )
        assert all(float(n) == 0 for n in slow), slow  # none counted as a slow first token
        assert httpx.post(f"{edge.url}/v1/chat/completions", json=body).status_code == 200
    finally:
        edge.stop()
        regional.stop()
        sim.proc.kill()
