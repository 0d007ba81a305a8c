#!/usr/bin/env python3
"""Model server: continuous batching and quantization, measured in one run.

1. Batching: 16 requests of 64 tokens (greedy, ignore_eos) run one after another, then at
   concurrency 1, 4 and 16; aggregate generated tokens per second for each.
2. Quantization: for each mode this machine has (CPU: none, int8-dynamic; CUDA: none,
   int8, nf4) and each model size: weight memory and load time (from the server's start-up
   line), time to first token (median of 5) and tokens/s at batch 1 and 16.
Models are random Llamas built locally by `geogate backend make-tiny-model`.
Writes bench/results/backend.{md,json}. Run: .venv/bin/python bench/backend.py [--presets ..]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TOKENS = 64
REQUESTS = 16


async def stream_one(s: aiohttp.ClientSession, url: str, model: str) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) for one streamed request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = 0.0
    tokens = 0
    async with s.post(f"{url}/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
            elif doc["choices"] and doc["choices"][0]["delta"].get("content") and not first:
                first = time.perf_counter() - t0
    return first, tokens, time.perf_counter() - t0


async def aggregate(url: str, model: str, concurrency: int, n: int = REQUESTS) -> float:
    """Generated tokens per second over ``n`` requests run ``concurrency`` at a time."""
    async with aiohttp.ClientSession() as s:
        await stream_one(s, url, model)  # warm
        todo = iter(range(n))
        total = 0

        async def worker() -> None:
            nonlocal total
            for _ in todo:
                _, tokens, _ = await stream_one(s, url, model)
                total += tokens  # not `total += await ...`: that reads total before awaiting

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - t0)


async def ttft(url: str, model: str) -> float:
    async with aiohttp.ClientSession() as s:
        return statistics.median([(await stream_one(s, url, model))[0] for _ in range(5)])


def serve(model_dir: Path, work: Path, quantize: str) -> tuple[Any, str, dict[str, float]]:
    port = free_port()
    log = work / f"{model_dir.name}-{quantize}.log"
    proc = spawn(
        geogate_cmd(
            "backend", "--model", str(model_dir), "--port", str(port), "--quantize", quantize
        ),
        log,
    )
    wait_http(f"http://127.0.0.1:{port}/ready", timeout=300, proc=proc)
    m = re.search(
        r"weights (\d+) bytes, load ([\d.]+) s, device (\w+), dtype (\w+)", log.read_text()
    )
    assert m, log.read_text()
    info = {"weight_bytes": float(m.group(1)), "load_s": float(m.group(2))}
    return proc, f"http://127.0.0.1:{port}", info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--presets",
        default="tiny,small,medium",
        help="model sizes: tiny, small, medium (CPU), 1b (GPU)",
    )
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})"
    modes = ["none", "int8", "nf4"] if cuda else ["none", "int8-dynamic"]
    work = Path(tempfile.mkdtemp(prefix="geogate-backend-bench-"))
    models = {}
    for preset in args.presets.split(","):
        d = work / preset
        spawn_done = __import__("subprocess").run(
            geogate_cmd("backend", "make-tiny-model", str(d), "--preset", preset),
            capture_output=True,
            text=True,
            check=True,
        )
        models[preset] = (d, spawn_done.stdout.strip())

    batching: dict[str, float] = {}
    quant: list[dict[str, Any]] = []
    for preset, (d, _) in models.items():
        for mode in modes:
            proc, url, info = serve(d, work, mode)
            try:
                if preset == "tiny" and mode == "none":
                    batching["sequential_16"] = asyncio.run(aggregate(url, preset, 1))
                    for c in (1, 4, 16):
                        batching[f"concurrent_{c}"] = asyncio.run(aggregate(url, preset, c))
                    print("batching:", {k: round(v) for k, v in batching.items()}, flush=True)
                row = {
                    "model": preset,
                    "quantize": mode,
                    **info,
                    "ttft_ms": asyncio.run(ttft(url, preset)) * 1000,
                    "tok_s_batch1": asyncio.run(aggregate(url, preset, 1, n=3)),
                    "tok_s_batch16": asyncio.run(aggregate(url, preset, 16, n=16)),
                }
                quant.append(row)
                print(row, flush=True)
            finally:
                stop(proc)
    write(device, batching, quant, {p: s for p, (_, s) in models.items()})


def write(
    device: str, batching: dict[str, float], quant: list[dict[str, Any]], models: dict[str, str]
) -> None:
    seq = batching["sequential_16"]
    lines = [
        "# Model server benchmark",
        "",
        f"Device: {device}; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}. Random Llama models built locally:",
        "",
        *[f"- {p}: {s}" for p, s in models.items()],
        "",
        f"## Continuous batching (tiny model, {REQUESTS} requests x {TOKENS} tokens, greedy)",
        "",
        "| run | tokens/s (aggregate) | vs sequential |",
        "|---|---|---|",
        f"| {REQUESTS} one after another | {seq:.0f} | 1.00 |",
        *[
            f"| concurrency {c} | {batching[f'concurrent_{c}']:.0f} | "
            f"{batching[f'concurrent_{c}'] / seq:.2f} |"
            for c in (1, 4, 16)
        ],
        "",
        "## Quantization",
        "",
        "| model | quantize | weight bytes | load s | TTFT ms (median of 5) | tok/s batch 1 | "
        "tok/s batch 16 |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['quantize']} | {r['weight_bytes']:.0f} | {r['load_s']:.2f} | "
            f"{r['ttft_ms']:.1f} | {r['tok_s_batch1']:.0f} | {r['tok_s_batch16']:.0f} |"
            for r in quant
        ],
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backend.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "backend.json").write_text(
        json.dumps(
            {"device": device, "batching": batching, "quantization": quant, "models": models},
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
