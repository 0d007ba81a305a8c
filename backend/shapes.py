"""OpenAI response, chunk and error shapes, shared by the model server and the simulated
backend. Imports no torch: the simulated backend runs where torch is not installed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_card(model: str, created: int, owned_by: str, **more: Any) -> dict[str, Any]:
    """A /v1/models entry, as the model server, the sim and the gateway answer it (``more``:
    vLLM's extra fields, max_model_len)."""
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by, **more}


def sse(doc: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``doc``."""
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class Shape:
    """Builds OpenAI response objects for one request."""

    def __init__(self, model: str, chat: bool, include_usage: bool = False) -> None:
        """``include_usage``: a stream whose last chunk carries the usage; every other chunk
        then has ``"usage": null``, as OpenAI's (its stream_options says so)."""
        self.model = model
        self.chat = chat
        self.usage_key: dict[str, Any] = {"usage": None} if include_usage else {}
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _base(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chunk(self, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return {**self._base(self.object), "choices": [choice], **self.usage_key}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._base(self.object), "choices": [], "usage": usage}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": text},
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "logprobs": None, "finish_reason": finish, "text": text}
            obj = "text_completion"
        return {**self._base(obj), "choices": [choice], "usage": usage}
