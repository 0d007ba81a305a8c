#!/usr/bin/env python3
"""µs per call of finding ``model`` and ``stream`` in a request body, by body size:

  - json.loads (stdlib): the whole document into Python objects (gateway before issue 14);
  - orjson.loads: the same, in Rust;
  - msgspec Struct(model, stream): decodes only those two fields and skips the rest (it still
    checks the skipped JSON's grammar, but not its UTF-8: see the "+ UTF-8 check" row);
  - msgspec + UTF-8 check: the same after ``bytes.isascii()`` (or a strict decode when not
    ASCII), which is what it takes to refuse every body json.loads refuses;
  - bounded scan: a regex over the first 4 KB. Not correct (a "model" key nested in a message,
    a duplicate key, an escaped key, or a body that puts model after 4 KB of messages as the
    OpenAI SDKs do), measured as the floor of what skipping the parse could save;
  - gateway.http.body_model.model_of: the function of this tree, errors and all.

Bodies are OpenAI chat requests in the SDKs' key order (messages, then model, then stream),
of 90 B, 4 KB, 64 KB and 1 MB, ASCII, plus 4 KB with non-ASCII text (the UTF-8 check then
decodes). Each cell: the best of 7 repeats of enough calls to take ~0.2 s.

  .venv/bin/python bench/model_of.py      # writes bench/results/model_of.{md,json}
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

try:  # bench-only (pip install orjson); the gateway does not use it
    import orjson
except ImportError:
    # None for a module: a type error where orjson (typed) is installed; none where it is
    # missing (pyproject.toml's ignore_missing_imports makes it Any).
    orjson = None  # type: ignore[assignment,unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.http.body_model import model_of  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCAN_BYTES = 4096
NON_ASCII = "Geo-Gateway lenkt jedes Token zur nächsten GPU — 速い. " * 8
TEXT = "The quick geo gate routes every token to a nearby GPU, and says why. " * 8


class _ModelAndStream(msgspec.Struct):
    model: Any = None
    stream: Any = None


_DECODER = msgspec.json.Decoder(_ModelAndStream)
_SCAN = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')


def with_json(body: bytes) -> tuple[Any, bool]:
    doc = json.loads(body)
    return doc.get("model"), doc.get("stream") is True


def with_orjson(body: bytes) -> tuple[Any, bool]:
    doc = orjson.loads(body)
    return doc.get("model"), doc.get("stream") is True


def with_msgspec(body: bytes) -> tuple[Any, bool]:
    doc = _DECODER.decode(body)
    return doc.model, doc.stream is True


def with_msgspec_utf8(body: bytes) -> tuple[Any, bool]:
    if not body.isascii():
        body.decode("utf-8", "surrogatepass")
    doc = _DECODER.decode(body)
    return doc.model, doc.stream is True


def with_scan(body: bytes) -> tuple[Any, bool]:
    m = _SCAN.search(body, 0, SCAN_BYTES)
    return (m.group(1).decode() if m else None), False


CANDIDATES: dict[str, Callable[[bytes], Any]] = {
    "json.loads (stdlib)": with_json,
    **({"orjson.loads": with_orjson} if orjson is not None else {}),
    "msgspec Struct(model, stream)": with_msgspec,
    "msgspec + UTF-8 check": with_msgspec_utf8,
    "bounded scan (regex, 4 KB; wrong)": with_scan,
    "gateway model_of (this tree)": model_of,
}


def body_of(size: int, text: str = TEXT) -> bytes:
    """A chat request of about ``size`` bytes, in the OpenAI SDKs' key order."""
    if size < 200:
        doc: dict[str, Any] = {
            "messages": [{"role": "user", "content": "hi"}],
            "model": "bench-model",
        }
        return json.dumps({**doc, "max_tokens": 16}).encode()
    messages: list[dict[str, str]] = []
    while True:
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": text})
        doc = {"messages": messages, "model": "bench-model", "stream": True, "max_tokens": 16}
        body = json.dumps(doc, ensure_ascii=False).encode()
        if len(body) >= size:
            return body


def bodies() -> dict[str, bytes]:
    return {
        "90 B": body_of(90),
        "4 KB": body_of(4096),
        "4 KB non-ASCII": body_of(
            4096, "Geo-Gateway lenkt jedes Token zur nächsten GPU — 速い. " * 8
        ),
        "64 KB": body_of(65536),
        "1 MB": body_of(1 << 20),
    }


def per_call_us(fn: Callable[[bytes], Any], body: bytes) -> float:
    fn(body)
    number = max(1, int(0.2 / max(timeit.timeit(lambda: fn(body), number=1), 1e-7)))
    number = min(number, 200_000)
    return min(timeit.repeat(lambda: fn(body), number=number, repeat=7)) / number * 1e6


def main() -> None:
    results: dict[str, dict[str, float]] = {}
    sizes = bodies()
    for name, fn in CANDIDATES.items():
        results[name] = {}
        for label, body in sizes.items():
            results[name][label] = per_call_us(fn, body)
        print(f"{name:36} " + "  ".join(f"{v:9.2f}" for v in results[name].values()), flush=True)
    header = "| candidate | " + " | ".join(f"{k} ({len(v):,} B)" for k, v in sizes.items())
    lines = [
        "# Finding model and stream in the request body",
        "",
        f"`.venv/bin/python bench/model_of.py`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"Python {platform.python_version()}, orjson "
        f"{orjson.__version__ if orjson else '(not installed)'}, msgspec "
        f"{msgspec.__version__}. µs per call, best of 7.",
        "",
        header + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_of.json").write_text(
        json.dumps({"sizes": {k: len(v) for k, v in sizes.items()}, "us": results}, indent=2) + "\n"
    )
    md = RESULTS / "model_of.md"
    marker = "<!-- analysis: kept across runs -->"
    kept = md.read_text().partition(marker)[2] if md.exists() else ""
    lines += ["", marker + kept.rstrip("\n")] if kept.strip() else []
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
