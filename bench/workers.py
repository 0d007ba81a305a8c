#!/usr/bin/env python3
"""``server.workers = N`` scaling (issue 14: within 85 % of linear up to the cores available).

geogate (default config: access log + GeoIP on) with workers = 1, 2, ... in front of the same
simulated backend (non-streaming, 16 tokens at once, as bench/overhead.py's non-streaming
cells), loaded by h2load over HTTP/1.1 keep-alive connections (count-based runs after a
calibration run that is also the warm-up, as bench/overhead_cells). Per N: req/s, the
gateway's CPU per request (utime + stime of its process tree, /proc), and the split between
workers: each worker's share of the gateway's CPU in the measured run, and of the established
client connections (sampled mid-run from /proc/PID/fd and /proc/net/tcp). uvicorn (the default
engine, gateway.server.Forked) gives every worker a listening socket of its own on the same
port (SO_REUSEPORT): the kernel picks a worker per new connection by a hash of its addresses
and ports. granian's workers share one listening socket since round twenty-nine
(gateway.engines.one_listening_socket): each new connection goes to the worker that accepts it
first. Either way a keep-alive connection then stays with its worker.
Scaling efficiency = rps(N) / (N x rps(1)). Nothing is pinned by default: where the load
generator and backend share the proxy's cores (a 2-core machine), req/s cannot scale and CPU
per request at 1 vs N workers is the figure to read (flat CPU per request = linear scaling
given free cores). --pin puts the gateway on the first N CPUs and the rig on the rest.

Writes bench/results/workers.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/workers.py [--workers 1,2] [--conc 64] [--duration 4] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, TOKENS  # noqa: E402
from bench.proc_cpu import CLK_TCK, process_tree, read_cpu, stat_fields  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from bench.stream_setup import H2load, h2load  # noqa: E402
from bench.streams import gateway_config  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PATH = "/v1/chat/completions"
CALIBRATION = 2000
SAMPLE_AFTER_S = 0.5  # connections are counted this long into the measured run


@dataclass
class Result:
    workers: int
    concurrency: int
    requests: int
    ok: int
    rps: float
    cpu_us_per_req: float
    cpu_res_us: float
    gateway_cores_busy: float  # gateway CPU seconds / wall seconds
    worker_cpu_share: list[float] = field(default_factory=list)  # per worker, sums to ~1
    worker_connections: list[int] = field(default_factory=list)  # per worker, mid-run
    worker_cpus: str = ""  # the first worker's allowed CPUs (/proc): did the pinning hold?
    efficiency: float | None = None  # rps(N) / (N x rps(1))
    cpu_vs_1: float | None = None  # CPU per request / the same at 1 worker


def ticks(pid: int) -> int:
    try:
        f = stat_fields(pid)
        return int(f[11]) + int(f[12])
    except (OSError, ValueError, IndexError):
        return 0


def socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def established_on(port: int) -> set[str]:
    """Inodes of established TCP sockets whose local port is port (the accepted ones)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                out.add(parts[9])
    return out


def allowed_cpus(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def measure(
    n: int, conc: int, port: int, body: Path, args: argparse.Namespace, tree: list[int], cpu: str
) -> Result:
    duration = args.duration
    url = f"http://127.0.0.1:{port}{PATH}"
    shape = ["--h1", "-c", str(conc), "-m", "1"]
    cal = h2load(url, body, shape, CALIBRATION, cpu, args.threads)
    count = max(conc * 20, int(cal.rps * duration))
    # With several workers the main process supervises and the children serve; uvicorn's one
    # worker is the main process itself.
    workers = tree[1:] or tree[:1]
    conns: list[int] = []

    def sample() -> None:
        time.sleep(SAMPLE_AFTER_S)
        est = established_on(port)
        conns.extend(len(socket_inodes(w) & est) for w in workers)

    sampler = threading.Thread(target=sample)
    w0 = [ticks(w) for w in workers]
    before = read_cpu(tree)
    sampler.start()
    run: H2load = h2load(url, body, shape, count, cpu, args.threads)
    sampler.join()
    after = read_cpu(tree)
    w1 = [ticks(w) for w in workers]
    cpu_s = (after.ticks - before.ticks) / CLK_TCK
    res = max(before.procs, after.procs) / CLK_TCK
    spent = [b - a for a, b in zip(w0, w1, strict=True)]
    total = sum(spent) or 1
    return Result(
        n,
        conc,
        count,
        run.ok,
        run.rps,
        cpu_s / max(1, run.ok) * 1e6,
        res / max(1, run.ok) * 1e6,
        cpu_s / run.wall_s,
        [s / total for s in spent],
        conns,
        allowed_cpus(workers[0]),
    )


def cpus_for(pin: bool, n: int) -> tuple[str | None, str]:
    """(gateway CPUs, rig CPUs) as taskset lists; (None, all) unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    everything = ",".join(map(str, cpus))
    if not pin or len(cpus) <= n:
        return None, everything
    return ",".join(map(str, cpus[:n])), ",".join(map(str, cpus[n:]))


def taskset(cpus: str | None, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *args] if cpus else args


def run_one(work: Path, n: int, args: argparse.Namespace, body: Path) -> list[Result]:
    gw_cpus, rig_cpus = cpus_for(args.pin, n)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for k in range(args.backends):
            port = free_port()
            sim = ["sim-backend", "--port", str(port), "--model", MODEL, "--tokens", str(TOKENS)]
            backend = spawn(taskset(rig_cpus, geogate_cmd(*sim)), work / f"sim-{n}-{k}.log")
            procs.append(backend)
            wait_http(f"http://127.0.0.1:{port}/health", proc=backend)
            ports.append(port)
        gw = free_port()
        conf = gateway_config(work, gw, ports[0], [f"server.workers={n}"])
        # More backends (--backends): more upstreams in the same region, so one simulated
        # backend process does not cap a many-worker gateway.
        with conf.open("a") as f:
            for k, port in enumerate(ports[1:], start=2):
                f.write(
                    f'\n[[upstreams]]\nid = "sim{k}"\nregion = "eu-central"\n'
                    f'url = "http://127.0.0.1:{port}"\nmodels = ["{MODEL}"]\n'
                )
        p = spawn(
            taskset(gw_cpus, geogate_cmd("gateway", "--config", str(conf))),
            work / f"geogate-{n}.log",
        )
        procs.append(p)
        wait_http(f"http://127.0.0.1:{gw}/readyz", proc=p)
        # uvicorn serves one worker in the main process, and forks N > 1 (gateway.server)
        want = 1 if n == 1 else n + 1
        deadline = time.monotonic() + 30
        while len(process_tree(p.pid)) < want and time.monotonic() < deadline:
            time.sleep(0.1)  # /readyz answers as soon as the first worker is up
        tree = process_tree(p.pid)
        if len(tree) != want:
            raise SystemExit(f"bench: expected {n} workers in {p.pid}'s tree, found {tree}")
        return [measure(n, c, gw, body, args, tree, rig_cpus) for c in args.conc]
    finally:
        for q in reversed(procs):
            stop(q)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--workers", default="1,2", help="server.workers values, comma list")
    ap.add_argument("--conc", default="64", help="h2load connections, comma list")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measured run")
    ap.add_argument("--pin", action="store_true", help="gateway on CPUs 0..N-1, rig on the rest")
    ap.add_argument("--backends", type=int, default=1, help="sim-backend processes (upstreams)")
    ap.add_argument("--threads", type=int, default=1, help="h2load threads")
    ap.add_argument("--out", type=Path, default=RESULTS / "workers", help="results path prefix")
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.conc = [int(c) for c in args.conc.split(",") if c.strip()]
    if not args.workers or min(args.workers) < 1 or not args.conc or min(args.conc) < 1:
        ap.error("--workers and --conc must be positive")
    if args.backends < 1 or args.threads < 1:
        ap.error("--backends and --threads must be positive")
    return args


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="geogate-workers-"))
    body = work / "body.json"
    body.write_text(json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
    print(f"workers: logs in {work}", flush=True)
    results: list[Result] = []
    for n in args.workers:
        for r in run_one(work, n, args, body):
            base = next(
                (b for b in results if b.workers == 1 and b.concurrency == r.concurrency), None
            )
            if base:
                r.efficiency = r.rps / (n * base.rps)
                r.cpu_vs_1 = r.cpu_us_per_req / base.cpu_us_per_req
            results.append(r)
            print(
                f"workers={n} c={r.concurrency}: {r.rps:,.0f} req/s  {r.cpu_us_per_req:.0f} µs "
                f"CPU/req  cores busy {r.gateway_cores_busy:.2f}  CPU split "
                f"{[round(s, 2) for s in r.worker_cpu_share]}  connections "
                f"{r.worker_connections}",
                flush=True,
            )
    write(results, args)


def _opt(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def write(results: list[Result], args: argparse.Namespace) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    cmd = (
        f".venv/bin/python bench/workers.py --workers {','.join(map(str, args.workers))} "
        f"--conc {','.join(map(str, args.conc))} --duration {args.duration:g}"
        + (" --pin" if args.pin else "")
        + (f" --backends {args.backends}" if args.backends > 1 else "")
        + (f" --threads {args.threads}" if args.threads > 1 else "")
    )
    lines = [
        "# server.workers scaling",
        "",
        f"Machine: {machine}. Command: `{cmd}`. "
        + (
            "Gateway pinned to CPUs 0..N-1, backend + h2load on the rest."
            if args.pin
            else "Nothing pinned: gateway, backend and h2load share every CPU."
        ),
        "geogate default config (access log + GeoIP on) plus server.workers = N; backend: "
        f"geogate sim-backend, non-streaming, {TOKENS} tokens at once; load: h2load --h1, "
        "keep-alive connections, one request at a time each.",
        "CPU/req: the gateway's process tree / 2xx answers. Split: each worker's share of the "
        "gateway's CPU in the run, and its established client connections mid-run. "
        "Efficiency = rps(N) / (N x rps(1)); CPU vs 1 = CPU/req over the same at 1 worker.",
        "",
        "| workers | c | requests | 2xx | req/s | efficiency | CPU µs/req (±res) | CPU vs 1 | "
        "gateway cores busy | CPU split by worker | connections by worker | worker CPUs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        split = " / ".join(f"{s:.0%}" for s in r.worker_cpu_share)
        conns = " / ".join(map(str, r.worker_connections))
        lines.append(
            f"| {r.workers} | {r.concurrency} | {r.requests} | {r.ok} | {r.rps:,.0f} | "
            f"{_opt(r.efficiency, '.0%')} | {r.cpu_us_per_req:.0f} (±{r.cpu_res_us:.0f}) | "
            f"{_opt(r.cpu_vs_1, '.2f')} | {r.gateway_cores_busy:.2f} | {split} | {conns} | "
            f"{r.worker_cpus} |"
        )
    write_results(
        args.out,
        lines,
        {
            "machine": machine,
            "command": cmd,
            "results": [asdict(r) for r in results],
        },
        DESIGN_NOTE,
    )


DESIGN_NOTE = """
## How workers go further than this machine

Each worker (uvicorn or granian) is a whole gateway process with its own event loop, upstream
connection pool, prober, load poller, GeoIP reader, metrics registry and routing snapshot:
per-request work never crosses processes, so req/s grows with the cores the workers get as long
as CPU per request stays flat (the "CPU vs 1" column says how far it does). Per worker: health
and outlier state, load estimates, the retry budget, in-flight counts and the max_streams cap
(each worker holds server.max_streams), /metrics and the dashboard (an ops request is answered
by whichever worker accepts it). Shared: nothing in memory; with Redis configured (the fleet
store) health, ejections, config and load become one view across the workers of a host and
across hosts. On Linux every worker listens on the public port with a socket of its own
(SO_REUSEPORT): the kernel spreads new connections by a hash, so balance is per connection, not
per request, and few long-lived connections (an edge tier's keep-alive or h2 connections) can
load workers unevenly (the connections column shows the split). Past one host, more hosts behind
the edge tier or DNS (README "One global hostname"), sharing state through Redis.
"""


if __name__ == "__main__":
    main()
