"""The simulated model server's speech-to-text endpoints, ``/v1/audio/transcriptions`` and
``/v1/audio/translations``: an upload's multipart form read with aiohttp's own parser (not the
gateway's, so a test sees what another server makes of the bytes a proxy sent), answered in
OpenAI's shapes with a "transcript" that says what arrived: the file's name, size and
checksum, the model and the region. ``stream=true`` answers with OpenAI's streamed events
(``transcript.text.delta`` then ``transcript.text.done``).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from backend.shapes import error_body, sse

AUDIO_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # pydantic's, as FastAPI's forms read


class _Sim(Protocol):
    """What this needs of the simulated server (backend.sim.SimBackend)."""

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def region(self) -> str: ...


async def transcribe(request: web.Request) -> web.StreamResponse:
    cfg: _Sim = request.app["sim"].cfg
    if request.content_type != "multipart/form-data":
        return _refuse(400, "send the upload as a multipart/form-data form", "invalid_request")
    try:
        form = await request.post()
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's multipart reader: bad framing
        return _refuse(400, f"request body is not a form: {exc}", "invalid_request")
    model, upload = form.get("model"), form.get("file")
    if not isinstance(model, str) or model not in cfg.models:
        return _refuse(404, f"model {model!r} does not exist here", "model_not_found")
    if not isinstance(upload, web.FileField):
        return _refuse(400, 'the form has no "file" upload', "invalid_request")
    data = upload.file.read()
    text = (
        f"{len(data)} bytes of {upload.filename} (sha256 {hashlib.sha256(data).hexdigest()[:16]})"
        f" for {model} in {cfg.region}"
    )
    stream = str(form.get("stream", "")).strip().lower() in _TRUE
    if not stream:
        return web.json_response({"text": text})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for word in text.split(" "):
        await resp.write(sse({"type": "transcript.text.delta", "delta": word + " "}))
    await resp.write(sse({"type": "transcript.text.done", "text": text}))
    await resp.write_eof()
    return resp


def _refuse(status: int, message: str, code: str) -> web.Response:
    return web.json_response(error_body(message, "invalid_request_error", code), status=status)
