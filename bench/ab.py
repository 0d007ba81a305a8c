#!/usr/bin/env python3
"""CPU per request of two or more proxies, A/B: each started once, then rounds that take turns
(h2load -n N -c C against each, HTTP/1.1, non-streaming), the proxy's CPU per request taken
per round, the median reported. Taking turns spreads this VM's drift (another tenant, clock
changes) over every target alike, where bench/overhead.py's one cell per target can land in a
quiet or a busy moment: use this one to decide whether a change pays, overhead.py for the
table against nginx and LiteLLM.

Targets: ``geogate`` (this tree, default config as bench/overhead.py's: access log, GeoIP),
``geogate@PATH`` (another source tree, e.g. `git archive HEAD` unpacked: a before/after pair
in one sitting), or a floor of bench/peers.py (floor-uvicorn: bench/floor_proxy.py on uvicorn's
own httptools protocol; floor-h1: the same proxy on gateway.h1's protocol, as geogate runs).

  .venv/bin/python bench/ab.py --targets floor-uvicorn,floor-h1 --out bench/results/round5/h1_floor

Proxies on CPU 0, the sim-backend and h2load on CPU 1. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, TOKENS, gateway_conf  # noqa: E402
from bench.overhead_cells import LOAD_CPU, PROXY_CPU, pinned  # noqa: E402
from bench.peers import FLOORS, start_floor  # noqa: E402
from bench.proc_cpu import cpu_between, process_tree, read_cpu  # noqa: E402
from bench.results_io import params, write_results  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402


def start(work: Path, target: str, backend: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    name = target.replace("/", "_")
    if target.startswith("geogate"):
        tree = Path(target.partition("@")[2] or ROOT).resolve()
        conf = gateway_conf(work, port, backend, name=name)
        env = {**os.environ, "PYTHONPATH": str(tree)}  # `-m gateway` from that tree
        cmd = pinned(PROXY_CPU, geogate_cmd("gateway", "--config", str(conf)))
        with (work / f"{name}.log").open("wb") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=tree, env=env)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
        return p, port
    p = start_floor(work, target, backend, port, pinned(PROXY_CPU, []))
    wait_http(f"http://127.0.0.1:{port}/health", proc=p)  # any path is proxied
    return p, port


def one_round(port: int, tree: list[int], body: Path, n: int, conc: int) -> float:
    """The proxy's CPU µs per request over one h2load run of ``n`` requests."""
    before = read_cpu(tree)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    args = ["h2load", "--h1", "-t", "1", "-n", str(n), "-c", str(conc), "-m", "1", "-d"]
    args += [str(body), "-H", "content-type: application/json", url]
    out = subprocess.run(pinned(LOAD_CPU, args), capture_output=True, text=True, timeout=300)
    if f"{n} succeeded" not in out.stdout:
        raise SystemExit(f"h2load against port {port}: not all {n} requests succeeded")
    return cpu_between(before, read_cpu(tree))[0] / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="floor-uvicorn,floor-h1")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=20000, help="per target per round")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ab")
    args = ap.parse_args()
    targets = args.targets.split(",")
    for t in targets:
        if not (t.startswith("geogate") or t in FLOORS):
            ap.error(f"unknown target {t!r}: geogate, geogate@PATH or one of {', '.join(FLOORS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backend = free_port()
        sim = geogate_cmd("sim-backend", "--port", str(backend), "--model", MODEL)
        procs = [spawn(pinned(LOAD_CPU, [*sim, "--tokens", str(TOKENS)]), work / "sim.log")]
        try:
            wait_http(f"http://127.0.0.1:{backend}/health", proc=procs[0])
            body = work / "body.json"
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            body.write_text(json.dumps({**chat, "max_tokens": TOKENS}))
            ports = {}
            for target in targets:
                p, port = start(work, target, backend)
                procs.append(p)
                ports[target] = (port, process_tree(p.pid))
            per_round: dict[str, list[float]] = {t: [] for t in targets}
            order = list(ports.items())
            for r in range(args.rounds + 1):
                # Each round in the other order than the last: a drift in time favours no
                # target's place in the round.
                for target, (port, tree) in order if r % 2 == 0 else reversed(order):
                    us = one_round(port, tree, body, args.requests, args.conc)
                    if r:  # round 0 warms every target up
                        per_round[target].append(round(us, 1))
        finally:
            for p in procs:
                stop(p)
    report(args, targets, per_round)


def report(args: argparse.Namespace, targets: list[str], per_round: dict[str, list[float]]) -> None:
    medians = {t: statistics.median(v) for t, v in per_round.items()}
    first = targets[0]
    lines = [
        "# CPU per request, A/B in alternating rounds (bench/ab.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}. Non-streaming, HTTP/1.1, c = {args.conc}, "
        f"{args.requests} requests per target per round, {args.rounds} rounds after one "
        "warm-up; proxies on CPU 0, sim-backend and h2load on CPU 1.",
        "",
        f"| target | median µs/request | vs {first} | each round |",
        "|---|---|---|---|",
    ]
    for t in targets:
        rounds = ", ".join(f"{v:.0f}" for v in per_round[t])
        lines.append(f"| {t} | {medians[t]:.1f} | {medians[t] / medians[first]:.2f} | {rounds} |")
    doc = {"params": params(args), "per_round_us": per_round, "median_us": medians}
    write_results(args.out, lines, doc)


if __name__ == "__main__":
    main()
