#!/usr/bin/env python3
"""The model server on a CUDA GPU: bf16/fp16, int8 and nf4 measured, then the server end to end.

For each model size (random Llamas built locally by backend/tiny.py: `1b`, and `7b` with
LLaMA-2-7B's shapes) and each `--quantize` mode, through the project's own loader and
continuous-batching engine, in this process:
  weight memory (the loader's count and the GPU allocation after loading), peak GPU memory,
  load time, time to first token (median of 5), generated tokens/s at batch 1 and batch 16
  (one request of TOKENS, then 16 at once), and whether the engine's greedy output equals
  `model.generate`'s (one prompt alone, then four prompts sharing the batch).
Then `python -m backend.cli` (what `geogate backend` runs) as a separate process on the 1b
model, driven by the official openai client: chat and completions, streaming and not, 16
concurrent streams, a client that disconnects after 3 chunks, and /metrics with the NVML
gauges.

Stages run in that order and stop starting new ones when `--budget-s` would be overrun; results
are rewritten after every stage, so a run cut short still leaves what it measured.
Writes OUT/gpu.json, OUT/gpu.md and OUT/server.log.

Run (on a GPU): python3 bench/gpu.py --out DIR [--presets 1b,7b] [--budget-s 400]
Dry run on a CPU: .venv/bin/python bench/gpu.py --device cpu --presets tiny \
    --modes none,int8-dynamic --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend.engine import Engine, Event, Sequence  # noqa: E402
from backend.loader import load_model  # noqa: E402
from backend.sampling import SamplingParams  # noqa: E402
from backend.tiny import PRESETS, make_tiny_model  # noqa: E402

TOKENS = 64  # generated per request in the speed runs
BATCH = 16
CHECK_TOKENS = 24  # generated per prompt in the greedy comparison
SPEED_PROMPT = "users in london, singapore and sydney get answers from a nearby gpu. hello"
CHECK_PROMPTS = [
    "the quick brown fox",
    "hello world! how are you today?",
    "a",
    "geogate routes every request to the nearest healthy region. a gateway in each region",
]
# Rough seconds per stage on an H100/H200, to decide whether the next one still fits.
ESTIMATE_S = {"build:1b": 20, "build:7b": 45, "1b": 30, "7b": 50, "server": 45}
GiB = 1024**3


class Run:
    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.doc: dict[str, Any] = {"env": {}, "models": {}, "runs": [], "server": {}}
        self.doc["skipped"] = []
        self.doc["errors"] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def fits(self, stage: str, key: str) -> bool:
        need = ESTIMATE_S.get(key, 30)
        if self.left() < need:
            self.doc["skipped"].append(f"{stage}: {self.left():.0f} s left, needs ~{need} s")
            log(f"skip {stage}")
            return False
        return True

    def error(self, stage: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        log(f"{stage} FAILED: {exc}\n{tb}")
        self.doc["errors"].append({"stage": stage, "error": repr(exc), "traceback": tb[-3000:]})

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu.json").write_text(json.dumps(self.doc, indent=2) + "\n")
        (self.out / "gpu.md").write_text(markdown(self.doc))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env(device: str) -> dict[str, Any]:
    import transformers

    e: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import bitsandbytes

        e["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:  # recorded: int8/nf4 rows then fail with the loader's message
        e["bitsandbytes"] = f"unavailable: {exc}"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        e["gpu"] = torch.cuda.get_device_name(0)
        e["gpu_memory_gib"] = round(p.total_memory / GiB, 1)
        e["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            e["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:
            e["driver"] = f"unavailable: {exc}"
    else:
        e["gpu"] = f"none (CPU {platform.machine()}, {os.cpu_count()} cores)"
    return e


def work_dir(need_bytes: int) -> Path:
    """tmpfs when it has room: writing and re-reading a 13 GB checkpoint costs seconds there."""
    for base in ("/dev/shm", "/tmp"):
        if os.path.isdir(base) and shutil.disk_usage(base).free > need_bytes * 1.2:
            return Path(base) / "geogate-gpu-bench"
    return Path("/tmp/geogate-gpu-bench")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- the engine, in process ---------------------------------------------------------------
class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        self.t_done = 0.0

    def __call__(self, e: Event) -> None:
        self.events.append(e)
        if e.kind != "token":
            self.t_done = time.perf_counter()
            self.done.set()

    def wait(self, timeout: float = 300) -> Event:
        if not self.done.wait(timeout):
            raise TimeoutError("the engine did not finish a request in time")
        last = self.events[-1]
        if last.kind == "error":
            raise RuntimeError(f"engine error: {last.text}")
        return last


def submit(engine: Engine, ids: list[int], max_tokens: int, ignore_eos: bool) -> Sequence:
    c = Collector()
    seq = Sequence(ids, SamplingParams(max_tokens, temperature=0, ignore_eos=ignore_eos), c)
    engine.submit(seq)
    return seq


def collector(seq: Sequence) -> Collector:
    c = seq.emit
    assert isinstance(c, Collector)
    return c


def generated_per_s(engine: Engine, ids: list[int], batch: int) -> float:
    t0 = time.perf_counter()
    seqs = [submit(engine, ids, TOKENS, ignore_eos=True) for _ in range(batch)]
    total = sum(collector(s).wait().completion_tokens for s in seqs)
    return total / (max(collector(s).t_done for s in seqs) - t0)


def greedy_check(loaded: Any, engine: Engine) -> dict[str, Any]:
    """Engine greedy vs model.generate greedy, one prompt alone and four sharing the batch."""
    tok, model, dev = loaded.tokenizer, loaded.model, loaded.device
    eos = engine.eos
    ref: list[list[int]] = []
    t_gen = 0.0
    for p in CHECK_PROMPTS:
        ids = torch.tensor([tok(p)["input_ids"]], device=dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=CHECK_TOKENS,
                do_sample=False,
            )
        t_gen += time.perf_counter() - t0
        new = out[0, ids.shape[1] :].tolist()
        cut = next((i for i, t in enumerate(new) if t in eos), len(new))  # the engine stops there
        ref.append(new[:cut])
    alone = submit(engine, tok(CHECK_PROMPTS[0])["input_ids"], CHECK_TOKENS, ignore_eos=False)
    collector(alone).wait()
    together = [
        submit(engine, tok(p)["input_ids"], CHECK_TOKENS, ignore_eos=False) for p in CHECK_PROMPTS
    ]
    for s in together:
        collector(s).wait()

    def agree(a: list[int], b: list[int]) -> int:
        return next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )

    return {
        "batch1_equal": alone.out_ids == ref[0],
        "batch4_equal": sum(s.out_ids == r for s, r in zip(together, ref, strict=True)),
        "batch4_of": len(CHECK_PROMPTS),
        # where a row first differs (= its length when equal): a late split after many equal
        # tokens is rounding between batch shapes, an early one is a bug
        "batch4_agree_prefix": [agree(s.out_ids, r) for s, r in zip(together, ref, strict=True)],
        "reference_lengths": [len(r) for r in ref],
        "generate_tok_s_batch1": round(sum(len(r) for r in ref) / t_gen, 1),
    }


def measure(
    run: Run, preset: str, model_dir: Path, mode: str, device: str, profile: bool
) -> dict[str, Any]:
    """``mode``: a --quantize value, optionally with a --dtype: ``int8:float16``."""
    free_memory()
    cuda = device == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0
    quantize, _, dtype = mode.partition(":")
    loaded = load_model(model_dir, quantize, dtype or "auto", device)  # type: ignore[arg-type]
    row: dict[str, Any] = {
        "model": preset,
        "quantize": quantize,
        "dtype": loaded.dtype,
        "weight_bytes": loaded.weight_bytes,
        "footprint_bytes": int(loaded.model.get_memory_footprint()),
        "load_s": round(loaded.load_s, 2),
    }
    if cuda:
        row["gpu_allocated_after_load_bytes"] = torch.cuda.memory_allocated() - base
        row["gpu_peak_load_bytes"] = torch.cuda.max_memory_allocated() - base
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=BATCH)
    engine.start()
    try:
        ids = loaded.tokenizer(SPEED_PROMPT)["input_ids"]
        row["prompt_tokens"] = len(ids)
        collector(submit(engine, ids, 8, ignore_eos=True)).wait()  # first-call costs
        ttfts = []
        for _ in range(5):
            s = submit(engine, ids, 1, ignore_eos=True)
            collector(s).wait()
            assert s.t_first is not None
            ttfts.append(s.t_first - s.t_submit)
        row["ttft_ms"] = round(statistics.median(ttfts) * 1000, 2)
        row["tok_s_batch1"] = round(generated_per_s(engine, ids, 1), 1)
        row["tok_s_batch16"] = round(generated_per_s(engine, ids, BATCH), 1)
        log(f"{preset} {mode}: {row}")
        row["greedy"] = greedy_check(loaded, engine)
        if cuda:
            row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated() - base
        if profile:
            run.doc["profile"] = step_profile(loaded, ids, run.out)
    finally:
        engine.stop()
        del engine, loaded
        free_memory()
    log(f"{preset} {mode}: greedy {row['greedy']}")
    return row


def step_profile(loaded: Any, ids: list[int], out: Path) -> dict[str, Any]:
    """Where a batch-1 decode step's time goes: generate, the engine on this thread and on
    its own, the bare forward pass, and torch.profiler's table of the engine's steps."""
    model, dev, tok = loaded.model, loaded.device, loaded.tokenizer
    n = 32
    res: dict[str, Any] = {}

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    x = torch.tensor([ids], device=dev)
    with torch.inference_mode():
        for _ in range(2):  # the second is the one kept
            sync()
            t = time.perf_counter()
            model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )
            sync()
            res["generate_ms_per_token"] = round((time.perf_counter() - t) * 1000 / n, 2)

    def inline(engine: Engine) -> float:
        seq = submit(engine, ids, n, ignore_eos=True)
        t = time.perf_counter()
        while not collector(seq).done.is_set():
            engine.step()
        return (time.perf_counter() - t) * 1000 / n

    e = Engine(model, tok, dev)
    inline(e)
    res["engine_inline_ms_per_token"] = round(inline(e), 2)
    threaded = Engine(model, tok, dev)
    threaded.start()
    try:
        s = submit(threaded, ids, n, ignore_eos=True)
        collector(s).wait()
        assert s.t_first is not None
        res["engine_thread_ms_per_token"] = round(
            (collector(s).t_done - s.t_first) * 1000 / (n - 1), 2
        )
    finally:
        threaded.stop()

    from transformers import DynamicCache

    kw = e._cache_kw
    with torch.inference_mode():
        for variant in ("engine_kwargs", "ids_only"):
            cache = DynamicCache(config=model.config)
            mask = torch.ones((1, len(ids)), dtype=torch.long, device=dev)
            model(input_ids=x, attention_mask=mask, use_cache=True, **{kw: cache})
            nxt = torch.tensor([[1]], device=dev)
            sync()
            t = time.perf_counter()
            for i in range(n):
                if variant == "engine_kwargs":
                    mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype, device=dev)], 1)
                    pos = torch.tensor([[len(ids) + i]], device=dev)
                    o = model(
                        input_ids=nxt,
                        attention_mask=mask,
                        position_ids=pos,
                        use_cache=True,
                        **{kw: cache},
                    )
                else:
                    o = model(input_ids=nxt, use_cache=True, **{kw: cache})
                int(o.logits[0, -1].argmax().item())
            res[f"forward_{variant}_ms"] = round((time.perf_counter() - t) * 1000 / n, 2)

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    seq = submit(e, ids, 12, ignore_eos=True)
    e.step()  # the prefill, outside the profile
    with profile(activities=acts) as prof:
        while not collector(seq).done.is_set():
            e.step()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
    (out / "profile.txt").write_text(table)
    log(f"profile: {res}")
    return res


# --- the server, as a process, through the openai client -----------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(url: str, name: str) -> float | None:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def server_stage(model_dir: Path, device: str, out: Path) -> dict[str, Any]:
    import httpx
    import openai

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logf = (out / "server.log").open("wb")
    cmd = [sys.executable, "-m", "backend.cli", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--device", device, "--served-model-name", "m"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    res: dict[str, Any] = {"command": " ".join(cmd[1:])}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see server.log")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 180:
                raise TimeoutError("server not ready in 180 s")
            time.sleep(0.2)
        res["ready_s"] = round(time.perf_counter() - t0, 1)
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        msgs: Any = [{"role": "user", "content": "hello, how are you?"}]
        whole = c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0)
        assert whole.usage is not None
        res["chat"] = {
            "finish_reason": whole.choices[0].finish_reason,
            "usage": whole.usage.model_dump(),
        }
        chunks = list(
            c.chat.completions.create(
                model="m",
                messages=msgs,
                max_tokens=16,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        last = chunks[-1]
        res["chat_stream"] = {
            "chunks": len(chunks),
            "first_delta_role": chunks[0].choices[0].delta.role,
            "usage_chunk": last.usage.model_dump() if last.usage else None,
            "same_text_as_non_streaming": streamed == (whole.choices[0].message.content or ""),
        }
        comp = c.completions.create(
            model="m", prompt="the quick brown", max_tokens=8, temperature=0
        )
        comp_stream = "".join(
            ch.choices[0].text
            for ch in c.completions.create(
                model="m", prompt="the quick brown", max_tokens=8, temperature=0, stream=True
            )
            if ch.choices
        )
        res["completions_stream_equals_whole"] = comp_stream == comp.choices[0].text

        def one_stream(_: int) -> tuple[float, int]:
            t = time.perf_counter()
            first = 0.0
            n = 0
            for ch in c.chat.completions.create(
                model="m",
                messages=msgs,
                max_tokens=TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            ):
                if ch.choices and ch.choices[0].delta.content and not first:
                    first = time.perf_counter() - t
                if ch.usage:
                    n = ch.usage.completion_tokens
            return first, n

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(BATCH) as pool:
            got = list(pool.map(one_stream, range(BATCH)))
        wall = time.perf_counter() - t
        res["concurrent_16"] = {
            "all_complete": all(n == TOKENS for _, n in got),
            "tok_s": round(sum(n for _, n in got) / wall, 1),
            "ttft_ms_median": round(statistics.median(f for f, _ in got) * 1000, 1),
            "ttft_ms_max": round(max(f for f, _ in got) * 1000, 1),
        }
        before = metric(url, "vllm:generation_tokens_total") or 0.0
        stream = c.chat.completions.create(
            model="m",
            messages=msgs,
            max_tokens=400,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        read = 0
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                read += 1
                if read == 3:
                    break
        stream.close()  # the client leaves: its connection closes mid-stream
        deadline = time.monotonic() + 10
        while metric(url, "vllm:num_requests_running") and time.monotonic() < deadline:
            time.sleep(0.02)
        res["cancel"] = {
            "content_chunks_read": read,
            "tokens_generated": (metric(url, "vllm:generation_tokens_total") or 0.0) - before,
            "running_after": metric(url, "vllm:num_requests_running"),
            "of_max_tokens": 400,
        }
        text = httpx.get(f"{url}/metrics", timeout=10).text
        names = [
            "geogate_backend_gpu_utilization_perc",
            "geogate_backend_gpu_memory_used_bytes",
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:time_to_first_token_seconds_count",
            "vllm:generation_tokens_total",
        ]
        res["metrics"] = {n: metric(url, n) for n in names}
        res["metrics_lines"] = len(text.splitlines())
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
        free_memory()
    log(f"server: {res}")
    return res


# --- report -------------------------------------------------------------------------------
def gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e9:.2f}"


def claims(doc: dict[str, Any], preset: str) -> list[str]:
    """Each quantized row against the unquantized one: weights, and tokens/s at 1 and 16."""
    rows = [r for r in doc["runs"] if r["model"] == preset]
    base = next((r for r in rows if r["quantize"] == "none"), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r is base or not r.get("tok_s_batch1") or not base.get("tok_s_batch1"):
            continue
        out.append(
            f"- {preset} {r['quantize']} ({r['dtype']}): weights "
            f"{r['weight_bytes'] / base['weight_bytes']:.2f} x {base['dtype']}'s; tokens/s "
            f"{r['tok_s_batch1'] / base['tok_s_batch1']:.2f} x at batch 1, "
            f"{r['tok_s_batch16'] / base['tok_s_batch16']:.2f} x at batch 16; TTFT "
            f"{r['ttft_ms'] / base['ttft_ms']:.2f} x (tokens/s > 1: faster; TTFT < 1: faster)"
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    e = doc["env"]
    prompt = doc["runs"][0]["prompt_tokens"] if doc["runs"] else "-"
    lines = [
        "# Model server on a GPU",
        "",
        f"GPU: {e.get('gpu')} ({e.get('gpu_memory_gib', '-')} GiB), driver {e.get('driver', '-')}, "
        f"CUDA {e.get('cuda', '-')}; torch {e.get('torch')}, transformers {e.get('transformers')}, "
        f"bitsandbytes {e.get('bitsandbytes')}; {e.get('date')}. Written by "
        f"`{doc.get('command', 'bench/gpu.py')}`.",
        "",
        *[f"Note: {n}" for n in doc.get("notes", [])],
        *([""] if doc.get("notes") else []),
        "Random Llamas built locally (`backend/tiny.py`): "
        + "; ".join(
            f"{k}: {v['parameters']:,} parameters, built in {v['build_s']} s"
            for k, v in doc["models"].items()
        ),
        "",
        f"Engine in process; TTFT: median of 5, prompt of {prompt} "
        f"tokens; tok/s: generated tokens over wall time, 1 request of {TOKENS} tokens, then "
        f"{BATCH} at once. GB = 10^9 bytes.",
        "",
        "| model | quantize | weights GB (loader) | GPU alloc after load GB | peak GPU GB | load s "
        "| TTFT ms | tok/s b1 | tok/s b16 | greedy = generate (alone; 4 together) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        g = r.get("greedy", {})
        alone = "yes" if g.get("batch1_equal") else "NO"
        greedy = f"{alone}; {g.get('batch4_equal')}/{g.get('batch4_of')}" if g else "-"
        q = f"{r['quantize']} ({r['dtype']})"
        lines.append(
            f"| {r['model']} | {q} | {gb(r['weight_bytes'])} | "
            f"{gb(r.get('gpu_allocated_after_load_bytes'))} | {gb(r.get('gpu_peak_bytes'))} | "
            f"{r['load_s']} | {r.get('ttft_ms', '-')} | {r.get('tok_s_batch1', '-')} | "
            f"{r.get('tok_s_batch16', '-')} | {greedy} |"
        )
    lines += [
        "",
        "## Claims (LLaMA-2-7B on a 24 GB A10G: weights 14 GB → 6.7 GB with INT8, ~30 % faster)",
        "",
    ]
    for preset in doc["models"]:
        lines += claims(doc, preset)
    if doc.get("profile"):
        lines += ["", "## A batch-1 decode step, ms (first model, first mode)", ""]
        lines += [f"- {k}: {v}" for k, v in doc["profile"].items()]
    s = doc.get("server") or {}
    if s:
        lines += [
            "",
            "## Server end to end (python -m backend.cli, openai client)",
            "",
            "```",
            json.dumps(s, indent=1),
            "```",
        ]
    if doc["skipped"] or doc["errors"]:
        lines += ["", "## Skipped / failed", ""]
        lines += [f"- skipped {x}" for x in doc["skipped"]]
        lines += [f"- FAILED {x['stage']}: {x['error']}" for x in doc["errors"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/gpu-bench"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--presets", default="1b,7b")
    ap.add_argument("--modes", default="none,int8,nf4")
    ap.add_argument("--server-preset", default=None, help="model for the server stage (first)")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument(
        "--profile", action="store_true", help="where a decode step's time goes (first model)"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here; for a dry run use --device cpu --presets tiny --modes none")
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, args.budget_s)
    run.doc["env"] = env(args.device)
    run.doc["command"] = " ".join(["bench/gpu.py", *sys.argv[1:]])
    log(f"env: {run.doc['env']}")
    run.save()
    presets = args.presets.split(",")
    server_preset = args.server_preset or presets[0]
    for preset in presets:
        if not run.fits(f"build {preset}", f"build:{preset}"):
            continue
        spec = PRESETS[preset]
        big = preset == "7b"  # bf16 on disk: 13.5 GB instead of 27
        dtype = "bfloat16" if big else "float32"
        d = work_dir(30 * GiB if big else 6 * GiB) / preset
        try:
            t = time.perf_counter()
            n = make_tiny_model(d, spec, dtype, args.device)
            free_memory()
            size = sum(f.stat().st_size for f in d.iterdir())
            run.doc["models"][preset] = {
                "parameters": n,
                "build_s": round(time.perf_counter() - t, 1),
                "checkpoint_bytes": size,
                "checkpoint_dtype": dtype,
                "dir": str(d),
            }
            log(f"built {preset}: {run.doc['models'][preset]}")
        except Exception as exc:
            run.error(f"build {preset}", exc)
            continue
        run.save()
        for mode in args.modes.split(","):
            if not run.fits(f"{preset} {mode}", preset):
                continue
            profile = args.profile and preset == presets[0] and "profile" not in run.doc
            try:
                run.doc["runs"].append(measure(run, preset, d, mode, args.device, profile))
            except Exception as exc:
                run.error(f"{preset} {mode}", exc)
                free_memory()
            run.save()
        if preset == server_preset and run.fits("server", "server"):
            try:
                run.doc["server"] = server_stage(d, args.device, args.out)
            except Exception as exc:
                run.error("server", exc)
            run.save()
        shutil.rmtree(d, ignore_errors=True)  # tmpfs is memory: free it for the next size
    run.save()
    log(f"done in {time.perf_counter() - run.t0:.0f} s")
    print((args.out / "gpu.md").read_text())


if __name__ == "__main__":
    main()
