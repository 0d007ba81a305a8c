#!/usr/bin/env python3
"""Where a geogate worker's CPU goes under load: py-spy samples the worker while h2load (or, for
streams, bench/paced_load.py) drives it, in the benchmark's default config (access log on, a
GeoIP database that every lookup hits) or the lean one.

Prints and writes (``--out``, default bench/results/profile) the CPU per request of the run,
the share of samples per layer (the leaf frame's module: our code, our upstream client, Starlette,
prometheus_client, logging, json, asyncio ...) and the top functions by own and by inclusive
samples. py-spy sees Python frames only: time in granian's Rust threads outside Python is the
difference between the process CPU and the sampled share, reported as such.

Run: .venv/bin/python bench/pyspy_profile.py [--mode non-streaming|streaming] [--conc 16]
     [--tokens 16] [--tokens-per-s 50] [--duration 6] [--lean] [--label before]
     (needs py-spy: pip install py-spy)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, PACED_TOKENS_PER_S, PACED_TTFT_MS, TOKENS, gateway_conf  # noqa: E402
from bench.overhead_cells import LOAD_CPU, PROXY_CPU, h2load, paced, pinned  # noqa: E402
from bench.proc_cpu import process_tree  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

# The leaf frame's file, first match wins: what each layer of the stack costs.
LAYERS = (
    ("gateway/http/intake", "ours: intake (checks, body, model, route call, record)"),
    ("gateway/http/upstream", "ours: upstream (attempts, streaming loop)"),
    ("gateway/http/exchange", "ours: access log line"),
    ("gateway/http/headers", "ours: header filtering"),
    ("gateway/http/relay", "ours: streamed body relay"),
    ("gateway/http/", "ours: other http (gate, paths, encoding, asgi)"),
    ("gateway/routing/", "ours: router (pure)"),
    ("gateway/client/", "ours: upstream client (gateway.client)"),
    ("gateway/h1", "ours: uvicorn protocol (gateway.h1)"),
    ("gateway/", "ours: runtime, fleet, traffic, client"),
    ("geodb/", "geodb: client ip, GeoIP lookup"),
    ("maxminddb", "maxminddb reader"),
    ("starlette/", "Starlette (routing, middleware)"),
    ("aiohttp/", "aiohttp client"),
    ("yarl/", "yarl (URLs)"),
    ("multidict", "multidict"),
    ("prometheus_client/", "prometheus_client"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("asyncio/", "asyncio"),
    ("uvloop", "uvloop"),
    ("uvicorn/", "uvicorn (httptools protocol)"),
    ("granian/server/", "event loop: uvloop's C and granian's Rust under no Python frame"),
    ("granian/", "granian (Python side)"),
)


# Frames every sample of the worker has beneath it: left out of the inclusive table.
BOOTSTRAP = (
    "multiprocessing/",
    "<frozen runpy>",
    "granian/server/",
    "gateway/cli/",
    "__main__",
    "gateway/server.py",
    "uvicorn/server.py",
)
_LINE = re.compile(r":\d+\)$")


def layer(frame: str) -> str:
    for key, name in LAYERS:
        if key in frame:
            return name
    return "other: " + frame.split("(")[-1].split(":")[0].rsplit("/", 1)[-1].rstrip(")")


def summarize(raw: Path, top: int) -> dict[str, object]:
    """py-spy's collapsed stacks ("f1;f2;leaf N" per line) into shares."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        # Frames by function (py-spy names the line too), without the process/thread frames.
        frames = [_LINE.sub(")", f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        layers[layer(frames[-1])] += count
        for f in set(frames):
            if not any(b in f for b in BOOTSTRAP):
                incl[f] += count

    def share(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(1, total), 1)) for k, v in c.most_common(top)]

    return {
        "samples": total,
        "layers": share(layers),
        "own": share(own),
        "inclusive": share(incl),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="geogate-profile-"))
    streaming = args.mode == "streaming"
    backend = free_port()
    sim = ["sim-backend", "--port", str(backend), "--model", MODEL, "--tokens", str(args.tokens)]
    if streaming:
        sim += ["--ttft-ms", str(PACED_TTFT_MS), "--tokens-per-s", str(args.tokens_per_s)]
    procs = []
    try:
        procs.append(spawn(pinned(LOAD_CPU, geogate_cmd(*sim)), work / "sim.log"))
        wait_http(f"http://127.0.0.1:{backend}/health", proc=procs[-1])
        port = free_port()
        conf = gateway_conf(work, port, backend, args.engine, lean=args.lean, name="profile")
        gw_cmd = geogate_cmd("gateway", "--config", str(conf))
        gw = spawn(pinned(PROXY_CPU, gw_cmd), work / "gw.log")
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=gw)
        tree = process_tree(gw.pid)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        doc = {"model": MODEL, "max_tokens": args.tokens, "stream": streaming}
        doc["messages"] = [{"role": "user", "content": "hi"}]
        body = work / "body.json"
        body.write_text(json.dumps(doc))
        raw = work / "profile.txt"
        spy_args = [args.py_spy, "record", "--pid", str(gw.pid), "--subprocesses"]
        spy_args += ["--format", "raw", "--rate", str(args.rate), "--nonblocking"]
        spy_args += ["--duration", str(int(args.duration + 2)), "-o", str(raw)]
        spy = subprocess.Popen(
            pinned(LOAD_CPU, spy_args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # py-spy attached; the load's own warm-up fills the first second
        if streaming:
            row = paced(url, body.read_bytes(), "h1", args.conc, args.duration, tree, [])
        else:
            row = h2load(url, body, "h1", args.conc, args.duration, work / "h2load.log", tree)
        _, err = spy.communicate(timeout=args.duration + 60)
        if not raw.exists():
            sys.exit(f"profile: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        out = summarize(raw, args.top)
        out.update(
            label=args.label,
            tree=str(args.tree or ROOT),
            mode=args.mode,
            config="lean" if args.lean else "default",
            concurrency=args.conc,
            tokens=args.tokens,
            tokens_per_s=args.tokens_per_s if streaming else None,
            cpu_ms_per_req=row.cpu_ms_per_req,
            rps=round(row.rps, 1),
            ok=row.ok,
            failed=row.failed,
            raw=str(raw),
        )
        return out
    finally:
        for p in reversed(procs):
            stop(p)


def markdown(res: dict[str, object]) -> str:
    cpu = res["cpu_ms_per_req"]
    lines = [
        f"### {res['label'] or 'profile'}: {res['mode']}, c={res['concurrency']}, "
        f"{res['tokens']} tokens"
        + (f" at {res['tokens_per_s']}/s" if res["tokens_per_s"] else "")
        + f", {res['config']} config",
        "",
        f"CPU per request {cpu:.3f} ms, {res['rps']} req/s, {res['ok']} ok, "
        f"{res['failed']} failed, {res['samples']} samples (Python frames only).",
        "",
        "| layer (leaf frame) | share of samples |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} % |" for k, v in res["layers"]]  # type: ignore[attr-defined]
    for key, title in (("own", "own time"), ("inclusive", "inclusive time")):
        lines += ["", f"| top functions, {title} | share |", "|---|---|"]
        lines += [f"| `{k}` | {v} % |" for k, v in res[key]]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--mode", choices=("non-streaming", "streaming"), default="non-streaming")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=TOKENS, help="per answer")
    ap.add_argument("--tokens-per-s", type=float, default=PACED_TOKENS_PER_S, help="streaming")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--lean", action="store_true", help="access log off, no GeoIP database")
    ap.add_argument(
        "--engine", choices=("uvicorn", "granian", "hypercorn"), help="default: the config's"
    )
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--label", default="")
    ap.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="run the gateway from this source tree (e.g. `git archive HEAD` unpacked): a "
        "before/after pair in one sitting",
    )
    ap.add_argument("--out", type=Path, default=None, help="append the summary to OUT.md/.jsonl")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    ap.add_argument("--py-spy", default=spy)
    args = ap.parse_args()
    if args.out is not None:
        args.out = args.out.resolve()  # before the chdir below: the path is the caller's
    if args.tree is not None:  # `python -m gateway` imports from its working directory first
        os.environ["PYTHONPATH"] = str(args.tree.resolve())
        os.chdir(args.tree)
    res = run(args)
    text = markdown(res)
    print(text)
    if args.out is not None:
        with open(args.out.with_suffix(".md"), "a") as f:
            f.write(text + "\n")
        with open(args.out.with_suffix(".jsonl"), "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
