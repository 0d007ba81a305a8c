"""An upstream's error answer not in OpenAI's shape reaches the client in it, through a real
gateway, as the OpenAI SDK reads it: the SDK's exception text is ``error.message`` alone, so a
plain-text 500 or Ollama's ``{"error": "..."}`` said only "Error code: 500"."""

from __future__ import annotations

import gzip
import http.server
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.defaults import REFUSAL_BODY_MAX_BYTES
from tests.support import (
    Gateway,
    answer_whole,
    scripted_gateway,
)

# The model a request names -> what the upstream answers it: status, Content-Type, body
ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "text500": (500, "text/plain", b"CUDA out of memory\ntraceback follows"),
    "ollama404": (404, "application/json", b'{"error": "model \\"llama9\\" not found"}'),
    "fastapi422": (
        422,
        "application/json",
        b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]}',
    ),
    "html500": (500, "text/html", b"<html><body>Internal Server Error</body></html>"),
    "empty501": (501, "text/plain", b""),
    "coded400": (400, "application/json", b'{"message": "bad n", "code": "invalid_n"}'),
    "openai400": (
        400,
        "application/json",
        b'{"error": {"message": "max_tokens too large", "type": "invalid_request_error", '
        b'"param": "max_tokens", "code": null}}',
    ),
    "gzip500": (500, "text/plain", gzip.compress(b"compressed")),
    "big500": (500, "text/plain", b"x" * 10_000),
    "sse500": (500, "text/event-stream", b'data: {"error": "overloaded"}\n\n'),
}


class _Scripted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # health probes
        self._answer(200, "text/plain", b"ok")

    def do_POST(self) -> None:
        model = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["model"]
        status, ctype, body = ANSWERS[model]
        self._answer(status, ctype, body, gzip=model == "gzip500")

    def _answer(self, status: int, ctype: str, body: bytes, gzip: bool = False) -> None:
        coding = [("Content-Encoding", "gzip")] if gzip else []
        answer_whole(self, status, body, [("Content-Type", ctype), *coding])

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("reshape")
    extra = '[server]\nextra_api_paths = ["/v1/custom"]'  # an operator's own API path
    with scripted_gateway(tmp, _Scripted, ANSWERS, lambda t: t.replace("[server]", extra, 1)) as gw:
        yield gw


@pytest.mark.parametrize(
    ("model", "status", "message", "code"),
    [
        ("text500", 500, "CUDA out of memory", "upstream_http_500"),
        ("ollama404", 404, 'model "llama9" not found', "upstream_http_404"),
        ("fastapi422", 422, "body.messages: Field required", "upstream_http_422"),
        ("html500", 500, "the upstream answered HTTP 500 with no message", "upstream_http_500"),
        ("empty501", 501, "the upstream answered HTTP 501 with no message", "upstream_http_501"),
        ("coded400", 400, "bad n", "invalid_n"),
    ],
)
def test_an_error_not_in_openais_shape_is_put_in_it(
    gw: Gateway, model: str, status: int, message: str, code: str
) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=[])
    err = caught.value
    assert err.status_code == status
    assert str(err) == f"Error code: {status} - {message}"  # the SDK's text: the message
    body = err.response.json()["error"]
    assert (body["message"], body["code"], body["param"]) == (message, code, None)
    assert body["type"] == ("invalid_request_error" if status < 500 else "upstream_error")
    assert err.response.headers["content-type"] == "application/json"
    assert err.response.headers["x-request-id"]  # the gateway's own headers still there


@pytest.mark.parametrize(
    ("model", "ctype"),
    [
        ("openai400", "application/json"),  # OpenAI's shape already: as it came
        ("gzip500", "text/plain"),  # compressed: not decoded to be rewritten
        ("big500", "text/plain"),  # past REFUSAL_BODY_MAX_BYTES: not read whole
        ("sse500", "text/event-stream"),  # an event stream: its client reads events
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/rerank", "/v1/custom"])
def test_other_answers_go_on_as_they_came(gw: Gateway, model: str, ctype: str, path: str) -> None:
    status, _, body = ANSWERS[model]
    assert model != "big500" or len(body) > REFUSAL_BODY_MAX_BYTES
    r = httpx.post(f"{gw.url}{path}", json={"model": model}, timeout=10)
    assert (r.status_code, r.headers["content-type"]) == (status, ctype)
    assert r.content == (gzip.decompress(body) if model == "gzip500" else body)  # httpx decodes


def test_the_rerank_score_and_extra_apis_keep_their_own_errors(gw: Gateway) -> None:
    # TEI's rerank errors carry an error_type of their own, and an extra_api_paths API is
    # the operator's: not put in OpenAI's shape there
    for path in ("/v1/rerank", "/v1/score", "/v1/custom"):
        r = httpx.post(f"{gw.url}{path}", json={"model": "ollama404"}, timeout=10)
        assert (r.status_code, r.content) == (404, ANSWERS["ollama404"][2]), r.text
