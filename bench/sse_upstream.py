"""A paced SSE upstream for bench/upstream_client.py, served by granian (HTTP/1.1 and h2c prior
knowledge, as the gateway's listener): GET /stream answers CHUNKS events, PACE_S apart, each
its own body message, so each reaches the client as a separate read (a separate wake-up of
the client's loop). Any other path answers a small JSON document at once.

  .venv/bin/granian --interface asgi --http auto --loop uvloop bench.sse_upstream:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

CHUNKS = int(os.environ.get("SSE_CHUNKS", "16"))
PACE_S = float(os.environ.get("SSE_PACE_S", "0.005"))
# An OpenAI chat.completion.chunk of about the size a real one has (~200 bytes).
EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"sim-model","choices":[{"index":0,"delta":{"content":" token"},'
    b'"finish_reason":null}]}\n\n'
)
SMALL = b'{"object":"list","data":[{"id":"sim-model","object":"model"}]}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] != "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": SMALL})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for _ in range(CHUNKS):
        await asyncio.sleep(PACE_S)
        await send({"type": "http.response.body", "body": EVENT, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
