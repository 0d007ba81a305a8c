"""The sim-backend's speech-to-text endpoints: what arrived, said back in OpenAI's shape, and
OpenAI-shaped 4xx answers for a request they cannot serve (never a plain-text 500, which a
gateway would count against the server)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import start_sim


def test_an_upload_is_described_and_bad_ones_are_refused(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "s", "eu", ["whisper"])
    try:
        url = f"{sim.url}/v1/audio/transcriptions"
        r = httpx.post(url, data={"model": "whisper"}, files={"file": ("a.wav", b"RIFF")})
        assert r.status_code == 200, r.text
        assert r.json()["text"].startswith("4 bytes of a.wav (sha256 ")
        assert r.json()["text"].endswith(" for whisper in eu")
        for status, code, req in [
            (404, "model_not_found", {"data": {"model": "nope"}, "files": {"file": ("a", b"")}}),
            (400, "invalid_request", {"data": {"model": "whisper"}}),
            (400, "invalid_request", {"json": {"model": "whisper"}}),
            (
                400,
                "invalid_request",
                {
                    "content": b"--B\r\nnope",
                    "headers": {"content-type": "multipart/form-data; boundary=B"},
                },
            ),
        ]:
            r = httpx.post(url, **req)  # type: ignore[arg-type]
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (req, r.text)
    finally:
        sim.proc.kill()
