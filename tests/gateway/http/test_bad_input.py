"""What a hostile or careless client sends, through a real gateway process in front of a real
simulated backend: each gets an OpenAI-shaped error from the gateway, and what must not reach
the backend does not (the sim counts every path it received, as received)."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    eventually,
    gateway_toml,
    start_gateway,
    start_sim,
)

BALANCER = "127.0.0.2"  # a trusted proxy in this gateway's config; 127.0.0.1 is a client
CHAT = json.dumps({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("bad_input")
    sim = start_sim(tmp, "a", "eu-central", ["m"])
    server = 'body_timeout_s = 1\nextra_api_paths = ["/v1/echo"]'
    gw = start_gateway(
        tmp,
        lambda port: (
            gateway_toml(port, [UpstreamSpec("a", "eu-central", sim.url, ["m"])])
            .replace("[server]", f"[server]\n{server}")
            .replace("[gateway]", f'[gateway]\ntrusted_proxies = ["{BALANCER}/32"]')
        ),
    )
    try:
        yield gw, sim
    finally:
        gw.stop()
        sim.proc.kill()


def raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (httpx would normalise the path), read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return parse(data)


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def post_head(path: bytes, length: int) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n"
    )


def error_of(status: int, body: bytes, want: int, code: str) -> str:
    assert status == want, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    # The field at fault where there is one (the model), else null, as OpenAI's errors say.
    assert err["param"] == ("model" if code == "model_not_found" else None), err
    return str(err["message"])


def sim_paths(sim: Sim) -> dict[str, int]:
    paths = sim.stats()["paths"]
    assert isinstance(paths, dict)
    return paths


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/../sleep",
        b"/v1/%2e%2e/reset_prefix_cache",
        b"/v1/%2E./sleep",
        b"/v1/chat/..%2f..%2fsleep",
        b"/v1/x/%252e%252e/chat/completions",
        b"/v1/./chat/completions",
        b"/v1/..;/sleep",
    ],
)
def test_dot_segments_are_refused_before_routing(fleet: tuple[Gateway, Sim], path: bytes) -> None:
    gw, sim = fleet
    status, _, body = raw(gw.port, post_head(path, len(CHAT)), CHAT.encode())
    message = error_of(status, body, 400, "invalid_request")
    assert path.decode() in message and "'..'" in message
    assert not [p for p in sim_paths(sim) if "sleep" in p or "reset" in p or "." in p]


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH", "OPTIONS"])
def test_a_known_endpoint_with_another_method_is_405(
    fleet: tuple[Gateway, Sim], method: str
) -> None:
    gw, _ = fleet
    r = httpx.request(method, f"{gw.url}/v1/chat/completions")
    message = error_of(r.status_code, r.content, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST" and method in message
    r = httpx.request(method, f"{gw.url}/v1/embeddings")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.post(f"{gw.url}/v1/models", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = httpx.post(f"{gw.url}/healthz")  # the gateway's own endpoints too
    assert "POST /healthz" in error_of(r.status_code, r.content, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD"


def test_a_known_endpoint_with_a_query_string_is_proxied(fleet: tuple[Gateway, Sim]) -> None:
    gw, sim = fleet
    r = httpx.post(f"{gw.url}/v1/chat/completions?api-version=2024-06-01", content=CHAT)
    assert r.status_code == 200, r.text
    assert sim_paths(sim).get("/v1/chat/completions?api-version=2024-06-01") == 1


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_unknown_v1_paths_are_answered_here_in_json(
    fleet: tuple[Gateway, Sim], method: str
) -> None:
    gw, sim = fleet
    r = httpx.request(method, f"{gw.url}/v1/load_lora_adapter", json={"lora_name": "x"})
    message = error_of(r.status_code, r.content, 404, "unknown_url")
    assert "/v1/load_lora_adapter" in message and "/v1/chat/completions" in message
    assert "/v1/load_lora_adapter" not in sim_paths(sim)


@pytest.mark.parametrize("path", ["/v1", "/healthz/", "/readyz/"])
def test_a_near_miss_path_is_a_json_404_not_a_redirect_to_the_clients_host(
    fleet: tuple[Gateway, Sim], path: str
) -> None:
    """Starlette's slash redirect would send the client to a Location made of its own Host."""
    gw, _ = fleet
    r = httpx.get(f"{gw.url}{path}", headers={"host": "evil.example"})
    message = error_of(r.status_code, r.content, 404, "unknown_url")
    assert "location" not in r.headers and path in message
    # A name the tokenless ops listener answers (any other is its 421: gateway.http.ops).
    ops = httpx.get(f"{gw.ops_url}/metrics/", headers={"host": "app.localhost"})
    assert ops.status_code == 404 and "location" not in ops.headers


def test_json_that_is_not_an_object_or_too_deep_is_400(fleet: tuple[Gateway, Sim]) -> None:
    gw, _ = fleet
    url = f"{gw.url}/v1/chat/completions"
    for doc, kind in ((b'[{"model": "m"}]', "an array"), (b'"m"', "a string"), (b"null", "null")):
        r = httpx.post(url, content=doc)
        message = error_of(r.status_code, r.content, 400, "invalid_request")
        assert f"must be a JSON object, not {kind}" in message
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(url, content=deep)
    assert "nested too deeply" in error_of(r.status_code, r.content, 400, "invalid_request")
    deep_in_object = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(url, content=deep_in_object)
    assert "nested too deeply" in error_of(r.status_code, r.content, 400, "invalid_request")


def test_a_chunked_body_over_the_limit_says_so_plainly(fleet: tuple[Gateway, Sim]) -> None:
    gw, _ = fleet

    def ten_megabytes() -> Iterator[bytes]:  # no Content-Length: chunked
        for _ in range(160):
            yield b" " * 65536

    r = httpx.post(f"{gw.url}/v1/chat/completions", content=ten_megabytes())
    message = error_of(r.status_code, r.content, 413, "request_too_large")
    assert message.startswith("request body is over this gateway's limit of 4194304 bytes")


def test_a_chunk_extension_with_no_end_is_refused_at_twice_the_body_limit(
    fleet: tuple[Gateway, Sim],
) -> None:
    """llhttp hands a chunk's extension to no callback, and the body's data was all that was
    counted: "1;a=bbbb..." was read until body_timeout_s (in a reviewer's one-off run, 30 GB
    in 30 s at 26 CPU-seconds).
    Its bytes as read count now: a 413 at twice server.max_body_bytes (4 MiB here)."""
    gw, sim = fleet
    before = sim.stats()["requests"]
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n1;a="
    )
    sent, data = 0, b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head)
        while sent < 64 * 2**20 and b"}}" not in data:
            readable, writable, _ = select.select([s], [s], [], 1)
            if readable:
                chunk = s.recv(65536)
                data += chunk
                if not chunk:
                    break
            elif writable:
                try:
                    sent += s.send(b"b" * 65536)
                except OSError:
                    break
    status, _, body = parse(data)
    message = error_of(status, body, 413, "request_too_large")
    assert "its chunked framing counted (2x server.max_body_bytes)" in message, message
    # refused at 8 MiB read (what the sockets buffer besides was sent too), not read on to the
    # deadline: the old code took all 64 MiB this sends at most
    assert sent < 32 * 2**20, sent
    assert sim.stats()["requests"] == before


def test_headers_over_the_limit_are_431_and_not_forwarded(fleet: tuple[Gateway, Sim]) -> None:
    gw, sim = fleet
    before = sim.stats()["requests"]
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=CHAT, headers={"X-Big": "a" * 100_000})
    message = error_of(r.status_code, r.content, 431, "request_headers_too_large")
    assert "limit of 40960 bytes (server.max_header_bytes 32768 + 8192 for the URL)" in message
    assert sim.stats()["requests"] == before


def test_a_body_that_trickles_in_times_out_with_408(fleet: tuple[Gateway, Sim]) -> None:
    """One byte every 0.2 s of a 1,000-byte body: the gateway (body_timeout_s = 1) answers
    408 within a few seconds instead of holding the request for 200 s."""
    gw, _ = fleet
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(post_head(b"/v1/chat/completions", 1000) + b"\r\n")
        data = b""
        while time.monotonic() - t0 < 10:
            if select.select([s], [], [], 0.2)[0]:
                chunk = s.recv(65536)
                data += chunk
                if not chunk or b"}}" in data:
                    break
                continue
            try:
                s.sendall(b" ")
            except OSError:
                break
    status, _, body = parse(data)
    message = error_of(status, body, 408, "request_timeout")
    assert "within 1 s" in message and "server.body_timeout_s" in message
    assert time.monotonic() - t0 < 5


CLAIMS = {
    "X-Real-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;host=admin.internal;proto=https",
    "X-Forwarded-Host": "admin.internal",
    "X-Forwarded-Port": "8443",
    "True-Client-IP": "6.6.6.6",
    "CF-Connecting-IP": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "6.6.6.6",
    "X-Client-IP": "6.6.6.6",
    "X-Cluster-Client-IP": "6.6.6.6",
    "Fastly-Client-IP": "6.6.6.6",
    "X-Original-Forwarded-For": "6.6.6.6",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-Forwarded-Prefix": "/admin",
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Scheme": "https",
    "Front-End-Https": "on",
    "X-Forwarded-Server": "admin.internal",
    "X-Forwarded-Uri": "/admin",
    "X-Host": "admin.internal",
    "Client-IP": "6.6.6.6",
    "X-Envoy-External-Address": "6.6.6.6",
}
OTHER_CLAIMS = [k.lower() for k in list(CLAIMS)[8:]]


def echo(gw: Gateway, source: str) -> dict[str, str]:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport) as c:
        r = c.post(f"{gw.url}/v1/echo", json={"model": "m"}, headers=CLAIMS)
    assert r.status_code == 200, r.text
    return {k.lower(): v for k, v in r.json()["headers"].items()}


def test_a_clients_claims_about_itself_do_not_reach_the_backend(
    fleet: tuple[Gateway, Sim],
) -> None:
    gw, _ = fleet
    seen = echo(gw, "127.0.0.1")
    # Underscored names, which a CGI or WSGI backend reads as the dashed ones: dropped.
    transport = httpx.HTTPTransport(local_address="127.0.0.1")
    with httpx.Client(transport=transport) as c:
        sneaky = {"X_Forwarded_For": "6.6.6.6", "X_Real_IP": "6.6.6.6", "True_Client_IP": "6.6.6.6"}
        r = c.post(f"{gw.url}/v1/echo", json={"model": "m"}, headers=sneaky)
    got = {k.lower() for k in r.json()["headers"]}
    assert not got & {"x_forwarded_for", "x_real_ip", "true_client_ip"}, got
    for name in ("forwarded", "x-forwarded-host", "x-forwarded-port"):
        assert name not in seen
    for name in ("true-client-ip", "cf-connecting-ip", *OTHER_CLAIMS):
        assert name not in seen
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_a_trusted_balancers_hop_stays_in_x_forwarded_for(fleet: tuple[Gateway, Sim]) -> None:
    gw, _ = fleet
    seen = echo(gw, BALANCER)
    assert seen["x-forwarded-for"] == f"6.6.6.6, {BALANCER}"  # the balancer's own hop kept
    assert seen["x-real-ip"] == "6.6.6.6"  # the client the balancer vouched for
    assert seen["x-forwarded-host"] == "admin.internal"  # the balancer's to tell
    assert seen["x-forwarded-proto"] == "https"
    assert all(
        seen[name] == CLAIMS[next(k for k in CLAIMS if k.lower() == name)] for name in OTHER_CLAIMS
    )


def access_lines(gw: Gateway) -> list[str]:
    # Every other line (granian's, geogate's own) starts with "[" or a date.
    return [line for line in gw.log_text().splitlines() if line.startswith("{")]


def test_the_access_log_cannot_be_forged(fleet: tuple[Gateway, Sim]) -> None:
    gw, _ = fleet
    before = len(access_lines(gw))
    fake = 'x status=200 upstream=evil "quoted" caf\u00e9'
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=CHAT,
        headers={b"X-Request-Id": fake.encode("utf-8")},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] != fake
    assert len(r.headers["x-request-id"]) == 32  # ours, a token
    # A CR and a NEL (U+0085) end a line for many readers; a \n never reaches the proxy
    # (the router's path pattern stops at it: a plain 404, no access line).
    forged = b'/v1/x%0d{"rid":%20"forged",%20"status":%20200}%C2%85'
    status, _, _ = raw(gw.port, post_head(forged, len(CHAT)), CHAT.encode())
    assert status == 404
    rid = r.headers["x-request-id"]

    def ours() -> list[str]:  # the two requests' lines (earlier tests' lines may come late:
        # the access log is written in batches, gateway.logs.BatchingStreamHandler)
        after = access_lines(gw)[before:]
        return [line for line in after if rid in line or '"path":"/v1/x' in line]

    eventually(lambda: len(ours()) >= 2, timeout=5, what="two access lines")
    lines = gw.log_text().splitlines()
    new = ours()
    assert len(new) == 2, new
    docs = [json.loads(line) for line in new]  # each a whole JSON object
    assert docs[0]["rid"] == r.headers["x-request-id"] and docs[0]["status"] == 200
    assert docs[1]["path"] == '/v1/x\r{"rid": "forged", "status": 200}\x85'
    assert docs[1]["status"] == 404 and docs[1]["rid"] != "forged"
    assert not [line for line in lines if "forged" in line and not line.startswith('{"ts"')]


def test_ops_errors(fleet: tuple[Gateway, Sim]) -> None:
    gw, _ = fleet
    r = httpx.get(f"{gw.ops_url}/explain", params={"model": "m", "ip": "notanip"})
    assert "'notanip' is not an IP address" in error_of(
        r.status_code, r.content, 400, "invalid_request"
    )
    r = httpx.get(f"{gw.ops_url}/explain", params={"model": "m", "ip": "fe80::1%eth0"})
    assert "is not an IP address" in error_of(r.status_code, r.content, 400, "invalid_request")
    r = httpx.get(f"{gw.ops_url}/explain", params={"model": "m", "ip": "::ffff:127.0.0.1"})
    assert r.status_code == 200 and r.json()["ip"] == "127.0.0.1", r.text
    # No model: every upstream was ruled out as "not serving it", a 200 that explained nothing.
    r = httpx.get(f"{gw.ops_url}/explain", params={"ip": "127.0.0.1"})
    assert "model=NAME" in error_of(r.status_code, r.content, 400, "invalid_request")
    r = httpx.get(f"{gw.ops_url}/explain", params={"model": "m", "country": "GB"})
    assert "not country" in error_of(r.status_code, r.content, 400, "invalid_request")
    r = httpx.get(f"{gw.ops_url}/admin/upstream/a")
    message = error_of(r.status_code, r.content, 404, "unknown_url")
    assert "admin API" in message and "/v1/" not in message


def test_a_model_id_with_a_line_break_is_a_model_not_found(fleet: tuple[Gateway, Sim]) -> None:
    """Starlette's {model:path} does not match a line break: the card fell through to the
    unknown-path 404, which said the API is under /v1/ of a path under /v1/models/."""
    gw, _ = fleet
    r = httpx.get(f"{gw.url}/v1/models/m1%0d%0aX")
    message = error_of(r.status_code, r.content, 404, "model_not_found")
    assert "'m1\\r\\nX' is not served" in message and r.json()["error"]["param"] == "model"


def test_a_lone_surrogate_in_the_model_is_answered_and_logged(fleet: tuple[Gateway, Sim]) -> None:
    """'\\ud800' is valid JSON text and a Python str, but has no UTF-8: the answer (a 404 that
    names it) and the access line (json.dumps's escape) must both still be written."""
    gw, _ = fleet
    body = b'{"model": "\\ud800x", "messages": []}'
    status, _, answer = raw(gw.port, post_head(b"/v1/chat/completions", len(body)), body)
    message = error_of(status, answer, 404, "model_not_found")
    assert "\\ud800x" in message
    eventually(
        lambda: any('"model":"\\ud800x"' in line for line in access_lines(gw)),
        timeout=5,
        what="the access line with the model escaped",
    )
    assert "Traceback" not in gw.log_text()


def test_a_request_refused_before_routing_names_its_client_in_the_access_line(
    fleet: tuple[Gateway, Sim],
) -> None:
    """A 400 before the body was read has no routing decision: the line still says who sent it."""
    gw, _ = fleet
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", content=b"{not json", headers={"x-request-id": "bad-json"}
    )
    assert r.status_code == 400
    line = access_line(gw, "bad-json")
    assert line["client"] == "127.0.0.1" and line["status"] == 400, line


def test_a_huge_model_name_is_cut_short_in_the_answer_and_the_access_line(
    fleet: tuple[Gateway, Sim],
) -> None:
    gw, _ = fleet
    model = "Z" * 90_000
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": model, "messages": []},
        headers={"x-request-id": "huge-model"},
    )
    message = error_of(r.status_code, r.content, 404, "model_not_found")
    assert len(r.content) < 1000 and "Z" * 200 + "..." in message
    line = access_line(gw, "huge-model")
    assert line["model"] == "Z" * 200 + "...", str(line)[:300]


def test_an_unknown_path_is_answered_logged_and_counted(fleet: tuple[Gateway, Sim]) -> None:
    # A scanner's probes of paths outside /v1 left no access line and no count: invisible.
    gw, _ = fleet
    before = len(access_lines(gw))
    r = httpx.get(f"{gw.url}/wp-login.php", headers={"X-Request-Id": "a-scanner"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", r.text
    assert r.headers["x-request-id"] == "a-scanner"
    eventually(lambda: len(access_lines(gw)) > before, what="its access line")
    line = json.loads(next(x for x in access_lines(gw) if '"a-scanner"' in x))
    assert (line["path"], line["status"], line["upstream"]) == ("/wp-login.php", 404, "-")
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    assert re.search(r'^geogate_requests_total\{code="404",region="-"\} [1-9]', metrics, re.M)
