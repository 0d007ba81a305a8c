#!/usr/bin/env python3
"""Why the engine's decode step ran 4x slower on its own thread than inline (bench/gpu.md):
shapes never seen before, or the thread? And does keeping SDPA off cuDNN fix it?

bench/gpu.md's profile timed the inline engine on prompts it had already run (every attention
shape seen before) and the threaded engine on shapes it had not. cuDNN's attention builds an
execution plan per new shape (tens of ms, per NVIDIA's and other projects' reports), and a
decode step's KV length is new at every token. So each case below runs a prompt length no
earlier case used (KV lengths disjoint), except "repeat" cases, which rerun the case before.

Cases, with cuDNN attention allowed (torch's default) and not (``enable_cudnn_sdp(False)``):
inline fresh, inline repeat, thread fresh, thread repeat (batch 1, ms per generated token), and
16 requests at once on the thread (fresh shapes, generated tokens/s). Also the attention
kernels a decode step ran (torch.profiler) and whether greedy output was the same.

Run (on a GPU): python3 bench/gpu_attention.py --out DIR
Dry run on a CPU: .venv/bin/python bench/gpu_attention.py --device cpu --preset tiny --out DIR
Writes DIR/gpu_attention.json and DIR/gpu_attention.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend.engine import Engine  # noqa: E402
from backend.loader import load_model  # noqa: E402
from backend.tiny import PRESETS, make_tiny_model  # noqa: E402
from bench.gpu import collector, submit  # noqa: E402

TOKENS = 48  # generated per batch-1 request
STRIDE = TOKENS + 24  # prompt lengths this far apart: no two cases share a KV length
BATCH = 16


def ids_of(tok: Any, n: int) -> list[int]:
    base = tok("users in london, singapore and sydney get answers from a nearby gpu")["input_ids"]
    return list(itertools.islice(itertools.cycle(base), n))


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def inline_ms(engine: Engine, ids: list[int], dev: str) -> float:
    seq = submit(engine, ids, TOKENS, ignore_eos=True)
    engine.step()  # prefill and the first token
    sync(dev)
    t = time.perf_counter()
    while not collector(seq).done.is_set():
        engine.step()
    sync(dev)
    return (time.perf_counter() - t) * 1000 / (TOKENS - 1)


def thread_ms(engine: Engine, ids: list[int]) -> tuple[float, list[int]]:
    seq = submit(engine, ids, TOKENS, ignore_eos=True)
    collector(seq).wait()
    assert seq.t_first is not None
    return (collector(seq).t_done - seq.t_first) * 1000 / (TOKENS - 1), list(seq.out_ids)


def batch_tok_s(engine: Engine, ids: list[int]) -> float:
    t = time.perf_counter()
    seqs = [submit(engine, ids, TOKENS, ignore_eos=True) for _ in range(BATCH)]
    total = sum(collector(s).wait().completion_tokens for s in seqs)
    return total / (max(collector(s).t_done for s in seqs) - t)


def kernels(engine: Engine, ids: list[int]) -> list[str]:
    """Attention ops a few decode steps ran."""
    seq = submit(engine, ids, 6, ignore_eos=True)
    engine.step()
    with torch.profiler.profile() as prof:
        while not collector(seq).done.is_set():
            engine.step()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "attention" in n.lower() or "sdp" in n.lower())


def run_cases(loaded: Any, cudnn: bool, lengths: itertools.count[int]) -> dict[str, Any]:
    dev = loaded.device
    if dev == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
    tok, model = loaded.tokenizer, loaded.model
    res: dict[str, Any] = {"cudnn_sdp_enabled": cudnn}
    inline = Engine(model, tok, dev, max_batch=BATCH)
    warm = ids_of(tok, next(lengths))
    inline_ms(inline, warm, dev)  # first-call costs, on shapes no case below uses
    fresh = ids_of(tok, next(lengths))
    res["inline_fresh_ms_per_token"] = round(inline_ms(inline, fresh, dev), 2)
    res["inline_repeat_ms_per_token"] = round(inline_ms(inline, fresh, dev), 2)
    res["kernels"] = kernels(inline, ids_of(tok, next(lengths)))
    threaded = Engine(model, tok, dev, max_batch=BATCH)
    threaded.start()
    try:
        thread_ms(threaded, ids_of(tok, next(lengths)))  # the thread's own first-call costs
        fresh = ids_of(tok, next(lengths))
        ms, out = thread_ms(threaded, fresh)
        res["thread_fresh_ms_per_token"] = round(ms, 2)
        ms, again = thread_ms(threaded, fresh)
        res["thread_repeat_ms_per_token"] = round(ms, 2)
        res["repeat_same_tokens"] = out == again
        res["greedy_tokens"] = thread_ms(threaded, ids_of(tok, 11))[1]  # one prompt for both
        batch = ids_of(tok, next(lengths))
        res["thread_fresh_tok_s_batch16"] = round(batch_tok_s(threaded, batch), 1)
    finally:
        threaded.stop()
    return res


def markdown(doc: dict[str, Any]) -> str:
    keys = [
        "inline_fresh_ms_per_token",
        "inline_repeat_ms_per_token",
        "thread_fresh_ms_per_token",
        "thread_repeat_ms_per_token",
        "thread_fresh_tok_s_batch16",
    ]
    lines = [
        "# The engine's decode step: new shapes, the thread, and cuDNN attention",
        "",
        f"{doc['env']}. Written by `python3 {doc['command']}`.",
        "",
        f"Model: {doc['preset']} ({doc['parameters']:,} parameters), {doc['dtype']}; "
        f"{TOKENS} tokens per batch-1 request; 'fresh': KV lengths no earlier case ran; "
        "'repeat': the case before, again.",
        "",
        "| cuDNN attention | " + " | ".join(keys) + " | attention ops |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for r in doc["cases"]:
        vals = " | ".join(str(r.get(k, "-")) for k in keys)
        lines.append(f"| {r['cudnn_sdp_enabled']} | {vals} | {', '.join(r['kernels'])} |")
    lines += ["", f"Greedy tokens equal with and without cuDNN: {doc.get('same_greedy')}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/gpu-attn"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--preset", default="1b")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = f"torch {torch.__version__}"
    if args.device == "cuda":
        env += f", {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}"  # type: ignore[no-untyped-call]
    doc: dict[str, Any] = {"env": env, "preset": args.preset}
    doc["command"] = " ".join(["bench/gpu_attention.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        doc["parameters"] = make_tiny_model(Path(d), PRESETS[args.preset], "bfloat16", args.device)
        loaded = load_model(Path(d), "none", "auto", args.device)
    doc["dtype"] = loaded.dtype
    lengths = itertools.count(16, STRIDE)
    doc["cases"] = []
    for cudnn in (True, False):
        doc["cases"].append(run_cases(loaded, cudnn, lengths))
        print(json.dumps(doc["cases"][-1]), flush=True)
        (args.out / "gpu_attention.json").write_text(json.dumps(doc, indent=2) + "\n")
    a, b = (c.pop("greedy_tokens") for c in doc["cases"])
    doc["same_greedy"] = a == b
    (args.out / "gpu_attention.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "gpu_attention.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
