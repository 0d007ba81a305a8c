"""The access line's values, taken when a request ends, and their text, made when the line's
batch is written (gateway.logs.BatchingStreamHandler)."""

from __future__ import annotations

import json

from gateway.http.exchange import AccessLine


def test_an_access_line_renders_the_values_taken_at_the_end() -> None:
    line = AccessLine(
        1764134123.25,
        "rid",
        "POST",
        "/v1/x\u2028",
        200,
        "m",
        "eu",
        "u1",
        1,
        0.0123,
        0.5,
        17,
        "127.0.0.1",
        "DE",
    )
    doc = json.loads(line.render())
    assert doc == {
        "ts": "2025-11-26T05:15:23.250+00:00",
        "rid": "rid",
        "method": "POST",
        "path": "/v1/x\u2028",
        "status": 200,
        "model": "m",
        "region": "eu",
        "upstream": "u1",
        "attempts": 1,
        "ttfb_ms": 12.3,
        "ms": 500.0,
        "bytes": 17,
        "client": "127.0.0.1",
        "country": "DE",
    }
    assert line.render().isascii()  # U+2028 escaped: no line break a log tool might split on
