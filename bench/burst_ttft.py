#!/usr/bin/env python3
"""Time to first token in a burst: 16 requests reach the model server's engine at once.

The engine admits all 16 at the next step. Prefilled one by one (``prefill_tokens=1``, the
engine before prefill groups), the last request's first token waits for 16 prefills; grouped
(the default, ``backend.batchkv.PREFILL_TOKEN_BUDGET``), for one. Both run in this process on
the same model, taking turns over ``--rounds`` (the order reversed each round); reported: TTFT
median and max over each round's burst, medians over rounds, and the burst's generated
tokens/s.

Run: .venv/bin/python bench/burst_ttft.py [--device cpu|cuda] [--preset small] [--out DIR]
Writes DIR/burst_ttft.json and DIR/burst_ttft.md (DIR: bench/results by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend.batchkv import PREFILL_TOKEN_BUDGET  # noqa: E402
from backend.engine import Engine  # noqa: E402
from backend.loader import load_model  # noqa: E402
from backend.tiny import PRESETS, make_tiny_model  # noqa: E402
from bench.gpu import collector, submit  # noqa: E402

BURST = 16
TOKENS = 16
PROMPT = "users in london, singapore and sydney get answers from a nearby gpu. hello"
SETTINGS = {"one by one": 1, "grouped": PREFILL_TOKEN_BUDGET}


def burst(engine: Engine, ids: list[int]) -> dict[str, float]:
    t0 = time.perf_counter()
    seqs = [submit(engine, ids, TOKENS, ignore_eos=True) for _ in range(BURST)]
    total = sum(collector(s).wait().completion_tokens for s in seqs)
    end = max(collector(s).t_done for s in seqs)
    ttfts = [(s.t_first or end) - s.t_submit for s in seqs]
    return {
        "ttft_ms_median": statistics.median(ttfts) * 1000,
        "ttft_ms_max": max(ttfts) * 1000,
        "tok_s": total / (end - t0),
    }


def measure(loaded: Any, rounds: int) -> dict[str, list[dict[str, float]]]:
    engines = {}
    for name, budget in SETTINGS.items():
        e = Engine(loaded.model, loaded.tokenizer, loaded.device, prefill_tokens=budget)
        e.start()
        engines[name] = e
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    try:
        for e in engines.values():
            burst(e, ids)  # warm-up: first-call costs
        per: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
        order = list(engines)
        for _ in range(rounds):
            for name in order:
                per[name].append(burst(engines[name], ids))
            order.reverse()
        return per
    finally:
        for e in engines.values():
            e.stop()


def summary(per: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    keys = ["ttft_ms_median", "ttft_ms_max", "tok_s"]
    return {
        name: {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}
        for name, runs in per.items()
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Time to first token in a burst of 16 (bench/burst_ttft.py)",
        "",
        f"{doc['env']}; `{doc['command']}`. Model: {doc['preset']} "
        f"({doc['parameters']:,} parameters), {doc['dtype']}; {BURST} requests submitted at once, "
        f"{TOKENS} tokens each, greedy, a {doc['prompt_tokens']}-token prompt; "
        f"medians over {doc['rounds']} rounds, the settings taking turns.",
        "",
        "| prefill | TTFT median ms | TTFT max ms | burst tokens/s |",
        "|---|---|---|---|",
    ]
    for name, s in doc["summary"].items():
        lines.append(f"| {name} | {s['ttft_ms_median']} | {s['ttft_ms_max']} | {s['tok_s']} |")
    one, grouped = (doc["summary"][k] for k in SETTINGS)
    ratio = one["ttft_ms_max"] / grouped["ttft_ms_max"]
    lines += ["", f"Last first token, one by one over grouped: {ratio:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench/results")
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = f"{platform.machine()}, torch {torch.__version__}"
    if args.device == "cuda":
        env += f", {torch.cuda.get_device_name(0)}"
    doc: dict[str, Any] = {"env": env, "preset": args.preset, "rounds": args.rounds}
    doc["command"] = " ".join(["bench/burst_ttft.py", *sys.argv[1:]])
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    with tempfile.TemporaryDirectory() as d:
        doc["parameters"] = make_tiny_model(Path(d), PRESETS[args.preset], dtype, args.device)
        loaded = load_model(Path(d), "none", "auto", args.device)
    doc["dtype"] = loaded.dtype
    doc["prompt_tokens"] = len(loaded.tokenizer(PROMPT)["input_ids"])
    doc["rounds_measured"] = measure(loaded, args.rounds)
    doc["summary"] = summary(doc["rounds_measured"])
    (args.out / "burst_ttft.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "burst_ttft.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
