#!/usr/bin/env python3
"""How a gateway's workers share new connections: ``--conns`` connections opened together to a
gateway with ``server.workers = --workers``, each sending one request and kept open, on each
engine, runs taking turns. uvicorn (the default engine, gateway.server) gives every worker a
listening socket of its own (SO_REUSEPORT: the kernel picks one by a hash of the connection's
addresses and ports); granian's workers share one socket that the main process holds
(gateway.engines.one_listening_socket: the worker that accepts first takes it). Each worker's
connections are counted from /proc: the established sockets on the port that it holds.

A keep-alive connection stays with the worker that took it, so an uneven split is uneven load
for as long as the connections live. The connections are made once every worker has logged
its start-up line and SETTLE_S more have passed: on granian a connection made while only one
worker serves goes to that one (uvicorn's wait in the queue of the worker they were hashed to).
They are opened one after another, each request sent once all are open.

Writes bench/results/worker_spread.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/worker_spread.py [--workers 2] [--conns 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proc_cpu import process_tree  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from bench.streams import gateway_config  # noqa: E402
from bench.workers import established_on, socket_inodes  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

ENGINES = ("uvicorn", "granian")
SETTLE_S = 1.0  # after the last start-up line, for the serve loop that follows it (no sign of it)
STARTED = "gateway region="  # each worker's line at the end of its start-up (gateway.http.app)
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: spread\r\n\r\n"


def one_run(work: Path, engine: str, workers: int, conns: int) -> list[int]:
    """Connections per worker, sorted, for one gateway started for this run."""
    work.mkdir(parents=True)
    port = free_port()
    sets = [f"server.workers={workers}", f'server.engine="{engine}"']
    conf = gateway_config(work, port, free_port(), sets)  # its upstream: none listens there
    proc = spawn(geogate_cmd("gateway", "--config", str(conf)), work / f"{engine}.log")
    socks: list[socket.socket] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        deadline = time.monotonic() + 60
        log = work / f"{engine}.log"
        while time.monotonic() < deadline and (
            len(process_tree(proc.pid)) < workers + 1 or log.read_text().count(STARTED) < workers
        ):
            time.sleep(0.1)
        tree = process_tree(proc.pid)
        started = log.read_text().count(STARTED)
        if len(tree) != workers + 1 or started < workers:
            raise SystemExit(f"bench: {started} of {workers} workers started ({tree})")
        time.sleep(SETTLE_S)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(conns)]
        for s in socks:
            s.sendall(REQUEST)
        for s in socks:
            if not s.recv(65536).startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"bench: {engine} did not answer /healthz")
        accepted = established_on(port)
        split = sorted(len(socket_inodes(pid) & accepted) for pid in tree[1:])
        if sum(split) != conns:
            raise SystemExit(f"bench: {engine}'s workers hold {sum(split)} of {conns}")
        return split
    finally:
        for s in socks:
            s.close()
        stop(proc)


def summary(runs: list[list[int]], conns: int) -> dict[str, Any]:
    """Each run's split, and how far from an even one: the largest worker's share over its
    even share (1.0: even), and the mean of that over the runs."""
    even = conns / len(runs[0])
    peaks = [max(r) / even for r in runs]
    return {"runs": runs, "peak_over_even": peaks, "mean_peak_over_even": statistics.mean(peaks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worker_spread")
    args = ap.parse_args()
    if args.workers < 2 or args.conns < 1 or args.runs < 1:
        ap.error("--workers must be at least 2, --conns and --runs at least 1")
    runs: dict[str, list[list[int]]] = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory(prefix="geogate-spread-") as tmp:
        for i in range(args.runs):
            for engine in ENGINES:  # taking turns: a drift in the machine touches both
                runs[engine].append(
                    one_run(Path(tmp) / f"{engine}-{i}", engine, args.workers, args.conns)
                )
    results = {e: summary(r, args.conns) for e, r in runs.items()}
    lines = [
        "# How workers share new connections",
        "",
        f"Machine: {platform.machine()}, Linux {platform.release()}, Python "
        f"{platform.python_version()}. Command: `bench/worker_spread.py --workers "
        f"{args.workers} --conns {args.conns} --runs {args.runs}`. Each run: a gateway with "
        f"server.workers = {args.workers}, {args.conns} connections opened in a row, one "
        "request each, connections per worker counted from /proc. Largest / even: the busiest "
        "worker's connections over an even share (1.00: even).",
        "",
        "| engine | listening sockets | connections per worker, each run | largest / even, mean |",
        "|---|---|---|---|",
    ]
    kinds = {"uvicorn": "one per worker (SO_REUSEPORT)", "granian": "one, shared"}
    for engine, r in results.items():
        split = "; ".join(" / ".join(str(n) for n in run) for run in r["runs"])
        lines.append(f"| {engine} | {kinds[engine]} | {split} | {r['mean_peak_over_even']:.2f} |")
    doc = {"workers": args.workers, "conns": args.conns, "results": results}
    write_results(args.out, lines, doc)


if __name__ == "__main__":
    main()
