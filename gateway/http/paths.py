"""Which ``/v1`` requests the proxy forwards: a table of the OpenAI API's endpoints, matched on
the path exactly as it will be sent upstream. Anything else is answered here, in JSON.

Why a table and not "forward every /v1 path": the README promises OpenAI-shaped errors, and
only a known endpoint's error answers are ones we can promise (a backend's 404 for an unknown
path is plain text); backends also serve operator endpoints under /v1 (vLLM's
``/v1/load_lora_adapter``) that no API client of a public gateway should reach; and a path
with dot-segments (``/v1/../sleep``, ``/v1/%2e%2e/reset_prefix_cache``) means another
endpoint to any proxy or backend that normalises it after us.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from gateway.errors import MethodNotAllowed, RequestInvalid, UnknownEndpoint

# POST endpoints whose body names the model (OpenAI's, and the rerank/score ones vLLM, TGI
# and others serve beside them): a JSON object, or for OpenAI's uploads (audio transcriptions
# and translations, image edits and variations) a multipart form with a "model" field
# (gateway.http.body_form). Either body goes to any of them: the Content-Type says which it is.
API_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/rerank",
    "/v1/score",
)
_API_PATH_SET = frozenset(API_PATHS)
# OpenAI's own, whose clients read OpenAI's error shape (gateway.http.reshape): not the
# rerank and score APIs (TEI's errors carry an error_type of their own), nor extra_api_paths.
OPENAI_PATHS = _API_PATH_SET - {"/v1/rerank", "/v1/score"}
PROXIED_METHOD = "POST"
# Answered by the gateway itself: a POST there is a wrong method, not an unknown URL.
LOCAL_GET = ("/v1/models",)

# A segment that is "." or ".." once decoded, whatever the separator: "/" or "\" (which some
# servers treat alike), or an encoded one; ";params" after it ("..;") as Tomcat reads them.
_DOT_SEGMENT = re.compile(r"(?:^|[/\\])\.{1,2}(?:[/\\;]|$)")
_MAX_DECODES = 4  # a path encoded more often than this is no API client's; refused as well


def has_dot_segment(raw_path: str) -> bool:
    """Whether the path has a "." or ".." segment, as sent or after up to ``_MAX_DECODES``
    rounds of percent-decoding: a proxy behind us that decodes once or twice (``%252e``) and
    normalises would otherwise turn it into another path."""
    path = raw_path
    for _ in range(_MAX_DECODES):
        if _DOT_SEGMENT.search(path):
            return True
        decoded = unquote(path, errors="surrogateescape")
        if decoded == path:
            return False
        path = decoded
    return True


def check_api_request(method: str, raw_path: str, extra_paths: Iterable[str] = ()) -> None:
    """Raise the error a client gets unless ``method raw_path`` is a request the proxy
    forwards. ``raw_path`` is the path as sent (still percent-encoded): it is what goes
    upstream, so it is what must match."""
    known = raw_path in _API_PATH_SET or raw_path in extra_paths
    if known and method == PROXIED_METHOD:
        # The everyday request, answered first: a known path has no dot-segment (API_PATHS
        # are ours, and config.checks.api_path refuses one in extra_api_paths), so the scan
        # and its rounds of percent-decoding would find nothing.
        return
    shown = _printable(raw_path)
    if has_dot_segment(raw_path):
        raise RequestInvalid(
            f"path {shown} has a '.' or '..' segment (possibly percent-encoded); "
            "send the endpoint's own path, such as /v1/chat/completions"
        )
    if known:
        raise MethodNotAllowed(
            f"{_printable(method)} {shown} is not allowed: this endpoint takes POST "
            "with a JSON body",
            (PROXIED_METHOD,),
        )
    if raw_path in LOCAL_GET or raw_path.startswith(tuple(p + "/" for p in LOCAL_GET)):
        raise MethodNotAllowed(
            f"{_printable(method)} {shown} is not allowed: the model list is read with GET",
            ("GET", "HEAD"),
        )
    raise UnknownEndpoint(
        f"{shown} is not an API endpoint of this gateway; it serves POST "
        f"{', '.join(API_PATHS[:3])} and the other OpenAI endpoints (README, HTTP surface), "
        "and GET /v1/models"
    )


_PLAIN = re.compile(r"[\x21-\x7e]{1,200}")


def _printable(text: str) -> str:
    """The client's text for a message: as sent when it is short visible ASCII, else quoted
    with escapes and cut short, so that it cannot pass for the message's own words."""
    if _PLAIN.fullmatch(text) and "'" not in text and '"' not in text:
        return text
    return ascii(text if len(text) <= 200 else text[:200] + "...")
