"""Kill one of three upstreams while 500 requests run at concurrency 20: zero may fail; and
after a failover, the metrics name the region that served."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli.procs import kill
from tests.support import (
    UpstreamSpec,
    eventually,
    gateway_toml,
    get_json,
    serve_http,
    start_gateway,
    start_sim,
)

TOTAL = 500
CONCURRENCY = 20
KILL_AFTER = 100


async def _run(url: str, on_progress: asyncio.Event) -> tuple[Counter[int], Counter[str]]:
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    todo = iter(range(TOTAL))
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            for _ in todo:
                async with s.post(f"{url}/v1/chat/completions", json=body) as r:
                    await r.read()
                    statuses[r.status] += 1
                    route = r.headers.get("geogate-route", "")
                    served[route.split("upstream=")[-1].split(";")[0]] += 1
                if sum(statuses.values()) >= KILL_AFTER:
                    on_progress.set()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, served


def test_kill_one_of_three_under_load_loses_nothing(tmp_path: Path) -> None:
    # Three near-equal upstreams in one region, so all three carry traffic when one dies.
    # Each answer takes ~20 ms, so requests are in flight on the victim when it is killed.
    sims = [
        start_sim(
            tmp_path, f"s{i}", "eu-central", ["m"], "--ttft-ms", "10", "--tokens-per-s", "400"
        )
        for i in range(3)
    ]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    gw = start_gateway(
        tmp_path,
        lambda port: gateway_toml(port, ups).replace("[server]", "[server]\naccess_log = false"),
    )
    try:

        async def scenario() -> tuple[Counter[int], Counter[str]]:
            progress = asyncio.Event()
            load = asyncio.ensure_future(_run(gw.url, progress))
            await progress.wait()
            kill(sims[1].proc)
            return await load

        statuses, served = asyncio.run(scenario())
        assert statuses == Counter({200: TOTAL}), statuses
        assert len(served) == 3 and all(n > 0 for n in served.values()), served
        table = get_json(f"{gw.ops_url}/routing-table")
        regions: list[dict[str, Any]] = table["regions"]  # type: ignore[assignment]
        victim = next(u for r in regions for u in r["upstreams"] if u["id"] == "s1")
        assert victim["healthy"] is False
        # The kill must have been felt: requests to the victim failed over, none was lost.
        metrics = urllib.request.urlopen(f"{gw.ops_url}/metrics").read().decode()
        retries = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("geogate_retries_total")
        )
        assert retries > 0, "no request failed over: the kill happened with nothing in flight"
    finally:
        gw.stop()
        for s in sims:
            kill(s.proc)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_the_metrics_name_the_region_that_served_and_a_5xx_is_no_ok_attempt(
    tmp_path: Path,
) -> None:
    """ "near" (eu-central, the client's region) answers 503 to everything: requests for "m"
    fail over to "far" (us-east), whose region the request metrics name, as the panels and
    alerts that read them say ("by serving region"). "broken" answers 500, which is passed
    on: its attempt is no "ok"."""
    sims = {
        "near": start_sim(
            tmp_path, "near", "eu-central", ["m"], "--error-rate", "1", "--error-status", "503"
        ),
        "far": start_sim(tmp_path, "far", "us-east", ["m"]),
        "broken": start_sim(tmp_path, "broken", "eu-central", ["b"], "--error-rate", "1"),
    }
    ups = [
        UpstreamSpec(n, s.region, s.url, ["b" if n == "broken" else "m"]) for n, s in sims.items()
    ]
    gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups))
    try:
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 200 and "upstream=far" in r.headers["geogate-route"], r.text
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body | {"model": "b"}, timeout=10)
        assert r.status_code == 500, r.text
        text = httpx.get(f"{gw.ops_url}/metrics").text
        assert _sample(text, "geogate_requests_total", code="200", region="us-east") == 1
        assert _sample(text, "geogate_requests_total", code="200", region="eu-central") is None
        assert _sample(text, "geogate_request_duration_seconds_count", region="us-east") == 1
        assert _sample(text, "geogate_requests_total", code="500", region="eu-central") == 1
        attempts = "geogate_upstream_attempts_total"
        assert _sample(text, attempts, upstream="near", outcome="status_503") == 1
        assert _sample(text, attempts, upstream="far", outcome="ok") == 1
        assert _sample(text, attempts, upstream="broken", outcome="status_5xx") == 1
        assert _sample(text, attempts, upstream="broken", outcome="ok") == 0
    finally:
        gw.stop()
        for s in sims.values():
            kill(s.proc)


class _SlowRefusal(http.server.BaseHTTPRequestHandler):
    """Healthy to probes; a request is held until the test releases it, then gets a 503
    (failed over)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(200)

    arrived = threading.Event()  # a request is held here (routed, its order made)
    release = threading.Event()  # set by the test once it has drained another upstream

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.arrived.set()
        self.release.wait(RELEASE_WAIT_S)
        self._answer(503)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return None


RELEASE_WAIT_S = 30.0  # a test that never releases still ends
ADMIN = "failover-test-operator-token"


def test_a_failover_skips_an_upstream_drained_since_the_request_was_routed(
    tmp_path: Path,
) -> None:
    # The order is made as the request is routed; a drain that came while its first upstream
    # held it still got the failover: new work on an upstream its operator was emptying. The
    # one skipped uses none of retry.max_attempts (2 here): the next one serves.
    far = start_sim(tmp_path, "far", "us-east", ["m"])
    other = start_sim(tmp_path, "other", "ap-southeast", ["m"])
    # The class's Events: a run before this one may have set them.
    _SlowRefusal.arrived.clear()
    _SlowRefusal.release.clear()
    with serve_http(_SlowRefusal) as near:
        ups = [
            UpstreamSpec("near", "eu-central", near, ["m"]),
            UpstreamSpec("far", "us-east", far.url, ["m"]),
            UpstreamSpec("other", "ap-southeast", other.url, ["m"]),
        ]
        extra = f'[admin]\ntoken = "{ADMIN}"\n\n[retry]\nmax_attempts = 2\n'
        gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups, extra=extra))
        try:
            body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                sent = pool.submit(
                    httpx.post, f"{gw.url}/v1/chat/completions", json=body, timeout=10
                )
                assert _SlowRefusal.arrived.wait(10)  # the drain comes after the routing
                r = httpx.patch(
                    f"{gw.ops_url}/admin/upstreams/far",
                    json={"drained": True},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                assert r.status_code == 200, r.text
                _SlowRefusal.release.set()  # the refusal comes after the drain, however slow
                answer = sent.result()
            assert answer.status_code == 200, answer.text
            route = answer.headers["geogate-route"]
            # Two attempts made (near, then other), not three: far was passed by untried.
            assert "upstream=other; reason=failover" in route and route.endswith("attempts=2")
            assert (far.stats()["requests"], other.stats()["requests"]) == (0, 1)
            eventually(lambda: '"attempts":2' in gw.log_text(), what="the access line")
        finally:
            gw.stop()
            kill(far.proc)
            kill(other.proc)


class _Busy(http.server.BaseHTTPRequestHandler):
    """Healthy to probes; answers every request 429 with a body, as a backend shedding load
    does; counts the connections its requests came on (a probe's alone not: it may overlap
    a request). (An answer in two writes is tests/gateway/client's.)"""

    protocol_version = "HTTP/1.1"
    posted: ClassVar[set[tuple[str, int]]] = set()  # the address of each request's connection

    def do_GET(self) -> None:
        self._answer(200, b"ok")

    def do_POST(self) -> None:
        type(self).posted.add(self.client_address[:2])
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(429, b'{"error": {"message": "at capacity", "code": "at_capacity"}}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        # One write, as aiohttp and geogate send: the body joins the head's buffer.
        self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
        self.flush_headers()

    def log_message(self, *_: object) -> None:
        return None


def test_an_upstream_answering_429_keeps_its_connections(tmp_path: Path) -> None:
    """Each 429 failed over from closed its connection: a backend shedding load got a new
    connection (a TLS handshake across regions) per request it refused, and the gateway a
    port in TIME_WAIT for each, just when it had least to spare. The answer's few bytes are
    read and the connection pooled."""
    far = start_sim(tmp_path, "far", "us-east", ["m"])
    _Busy.posted = set()
    with serve_http(_Busy) as busy:
        ups = [
            UpstreamSpec("busy", "eu-central", busy, ["m"]),
            UpstreamSpec("far", "us-east", far.url, ["m"], "bias_ms = 500"),
        ]
        gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups))
        try:
            body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(timeout=10) as c:
                for _ in range(20):
                    r = c.post(f"{gw.url}/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    assert "upstream=far; reason=failover" in r.headers["geogate-route"]
            # One connection, or two where a refusal's came back just after the next request
            # asked for one (it was 20).
            assert len(_Busy.posted) <= 2, _Busy.posted
        finally:
            gw.stop()
            kill(far.proc)


def test_a_refusal_names_the_upstreams_own_words(tmp_path: Path) -> None:
    """A 429 (a quota's, say) was "every upstream tried is at capacity: busy (HTTP 429)": the
    upstream's own message, which says what to do, was dropped with its body."""
    with serve_http(_Busy) as busy:
        ups = [UpstreamSpec("busy", "eu-central", busy, ["m"])]
        gw = start_gateway(tmp_path, lambda port: gateway_toml(port, ups))
        try:
            r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m"}, timeout=10)
            assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
            error = r.json()["error"]
            assert error["code"] == "upstreams_at_capacity"
            assert "busy (HTTP 429: at capacity)" in error["message"], error["message"]
        finally:
            gw.stop()
