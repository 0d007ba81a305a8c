#!/usr/bin/env python3
"""Gateway overhead, against peers in the same run.

Targets, all in front of the same simulated backend (geogate sim-backend, HTTP/1.1):
  direct          the backend itself (the floor)
  geogate         geogate gateway, granian engine (the default)
  geogate-hc      geogate gateway, hypercorn engine (the alternative the choice was made against)
  nginx           nginx as a plain reverse proxy (keep-alive upstream pool, buffering off)
Modes: non-streaming and streaming (SSE, 16 tokens) chat completions; protocols HTTP/1.1 and
h2c (prior knowledge; the backend speaks only HTTP/1.1, so direct has no h2c row); concurrency
1, 16 and 128. Load comes from h2load; latency percentiles come from its per-request log.
Proxies run on CPU 0; backend and load generator share CPU 1, the same for every target.
Also times the pure router's decision for 3, 30 and 300 upstreams.

Writes bench/results/overhead.{md,json}. Run: scripts/dev bench [--duration S] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cli.procs import (  # noqa: E402
    free_port,
    geogate_cmd,
    regions_toml,
    spawn,
    stop,
    wait_http,
)
from gateway.routing.model import RegionPoint, RequestFacts, Snapshot, UpstreamView  # noqa: E402
from gateway.routing.policy import Policy  # noqa: E402
from gateway.routing.router import route  # noqa: E402
from geodb.location import Location  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL = "bench-model"
TOKENS = 16
CONCURRENCY = (1, 16, 128)
H2_STREAMS_PER_CONN = 16
PROXY_CPU, LOAD_CPU = "0", "1"


@dataclass
class Row:
    target: str
    mode: str
    proto: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    failed: int


def pinned(cpu: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *args] if shutil.which("taskset") and os.cpu_count() else args


def nginx_conf(work: Path, h1: int, h2: int, backend: int) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{h1};
    listen 127.0.0.1:{h2} http2;
    http2_max_concurrent_streams 256;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return conf


def gateway_conf(work: Path, port: int, backend: int, engine: str) -> Path:
    conf = work / f"gateway-{engine}.toml"
    conf.write_text(f"""
[gateway]
region = "eu-central"
origin = "self"
[server]
port = {port}
engine = "{engine}"
access_log = false
{regions_toml("eu-central")}
[[upstreams]]
id = "sim"
region = "eu-central"
url = "http://127.0.0.1:{backend}"
models = ["{MODEL}"]
""")
    return conf


def _h2load_once(url: str, body: Path, shape: list[str], n: int, log: Path) -> str:
    log.unlink(missing_ok=True)
    # Count-based runs: h2load 1.52's duration mode (-D) stalls at 0 requests on some h2c
    # servers (nginx, hypercorn), so a short calibration run sizes the measured one instead.
    args = [
        "h2load",
        "-t",
        "1",
        *shape,
        "-n",
        str(n),
        "-d",
        str(body),
        "-H",
        "content-type: application/json",
        "--log-file",
        str(log),
        url,
    ]
    return subprocess.run(
        pinned(LOAD_CPU, args), capture_output=True, text=True, timeout=300
    ).stdout


def h2load(
    url: str, body: Path, proto: str, conc: int, duration: float, log: Path
) -> tuple[float, list[float], int, int]:
    if proto == "h1":
        shape = ["--h1", "-c", str(conc), "-m", "1"]
    else:
        conns = max(1, -(-conc // H2_STREAMS_PER_CONN))
        shape = ["-c", str(conns), "-m", str(max(1, conc // conns))]
    # Calibration, which is also the warm-up: pools filled, caches hot.
    out = _h2load_once(url, body, shape, max(conc * 20, 400), log)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    n = max(conc * 10, int(float(m.group(1)) * duration)) if m else conc * 10
    out = _h2load_once(url, body, shape, n, log)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    rps = float(m.group(1)) if m else 0.0
    lat, ok = [], 0
    for line in log.read_text().splitlines() if log.exists() else []:
        parts = line.split("\t")
        if len(parts) >= 3 and 200 <= int(parts[1]) < 300:
            ok += 1
            lat.append(int(parts[2]) / 1000)
    # Requests that never got a 2xx (errors, resets, other statuses) are failures.
    return rps, lat, ok, n - ok


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def router_times() -> dict[int, float]:
    """Median µs per decision, origin self, all upstreams serving the model."""
    regions = {
        f"r{i}": RegionPoint(f"r{i}", random.uniform(-60, 60), random.uniform(-180, 180))
        for i in range(10)
    }
    out = {}
    for n in (3, 30, 300):
        rng = random.Random(n)
        ups = tuple(
            UpstreamView(
                f"u{i}",
                f"r{i % 10}",
                frozenset({"m"}),
                rtt_ms=rng.uniform(1, 300) if i % 3 else None,
                ttft_ms=rng.uniform(20, 80),
                queue_depth=rng.uniform(0, 8),
            )
            for i in range(n)
        )
        snap = Snapshot(ups, regions, {u.id: rng.randint(0, 5) for u in ups})
        facts = RequestFacts("m", Location(48.0, 11.0, "DE", "EU"))
        policy = Policy("self", "r0")
        number = max(100, 30000 // n)
        call = functools.partial(route, facts, snap, policy, rng)
        runs = timeit.repeat(call, number=number, repeat=7)
        out[n] = statistics.median(runs) / number * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="1 s per measurement, c=16 only")
    args = ap.parse_args()
    duration = 1.0 if args.quick else args.duration
    concurrency = (16,) if args.quick else CONCURRENCY
    for tool in ("h2load", "nginx"):
        if not shutil.which(tool):
            sys.exit(
                f"bench: {tool} not found; run it through scripts/dev bench, which installs it"
            )

    work = Path(tempfile.mkdtemp(prefix="geogate-bench-"))
    backend = free_port()
    procs = [
        spawn(
            pinned(
                LOAD_CPU,
                geogate_cmd(
                    "sim-backend", "--port", str(backend), "--model", MODEL, "--tokens", str(TOKENS)
                ),
            ),
            work / "sim.log",
        )
    ]
    targets: dict[str, dict[str, int]] = {"direct": {"h1": backend}}
    try:
        wait_http(f"http://127.0.0.1:{backend}/health", proc=procs[0])
        for engine, name in (("granian", "geogate"), ("hypercorn", "geogate-hc")):
            port = free_port()
            conf = gateway_conf(work, port, backend, engine)
            p = spawn(
                pinned(PROXY_CPU, geogate_cmd("gateway", "--config", str(conf))),
                work / f"{name}.log",
            )
            procs.append(p)
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
            # hypercorn-h11 sends "HTTP/1.1 200 " (ASGI has no reason phrase), which h2load
            # counts as a failure: hypercorn is measured on h2c only.
            targets[name] = {"h2c": port} if engine == "hypercorn" else {"h1": port, "h2c": port}
        h1, h2 = free_port(), free_port()
        p = spawn(
            pinned(
                PROXY_CPU, ["nginx", "-c", str(nginx_conf(work, h1, h2, backend)), "-p", str(work)]
            ),
            work / "nginx.log",
        )
        procs.append(p)
        wait_http(f"http://127.0.0.1:{h1}/health", proc=p)
        targets["nginx"] = {"h1": h1, "h2c": h2}

        rows: list[Row] = []
        for mode, stream in (("non-streaming", False), ("streaming", True)):
            body = work / f"{mode}.json"
            body.write_text(
                json.dumps(
                    {
                        "model": MODEL,
                        "max_tokens": TOKENS,
                        "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                )
            )
            for proto in ("h1", "h2c"):
                for conc in concurrency:
                    for target, ports in targets.items():
                        if proto not in ports:
                            continue
                        url = f"http://127.0.0.1:{ports[proto]}/v1/chat/completions"
                        rps, lat, ok, failed = h2load(
                            url, body, proto, conc, duration, work / "h2load.log"
                        )
                        row = Row(
                            target,
                            mode,
                            proto,
                            conc,
                            rps,
                            pct(lat, 0.5),
                            pct(lat, 0.99),
                            ok,
                            failed,
                        )
                        rows.append(row)
                        print(
                            f"{mode:13} {proto:3} c={conc:<3} {target:10} {rps:8.0f} req/s "
                            f"p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms"
                            f"{'  FAILED ' + str(failed) if failed else ''}",
                            flush=True,
                        )
        router = router_times()
    finally:
        for p in reversed(procs):
            stop(p)
    write(rows, router, duration)


def write(rows: list[Row], router: dict[int, float], duration: float) -> None:
    def find(target: str, r: Row) -> Row | None:
        return next(
            (
                x
                for x in rows
                if x.target == target
                and (x.mode, x.proto, x.concurrency) == (r.mode, r.proto, r.concurrency)
            ),
            None,
        )

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    lines = [
        "# geogate overhead benchmark",
        "",
        f"Machine: {machine}. About {duration:g} s per cell after a calibration run that is "
        "also the warm-up; h2load, 1 thread.",
        "Proxies pinned to CPU 0; backend and h2load share CPU 1. Ratios compare targets "
        "measured in this same run; absolute numbers vary between machines and runs.",
        "",
        "| mode | proto | conc | target | req/s | p50 ms | p99 ms | rps vs direct | "
        "rps vs nginx | p50 vs nginx | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for r in rows:
        d, n = (
            find("direct", r)
            or find("direct", Row("", r.mode, "h1", r.concurrency, 0, 0, 0, 0, 0)),
            find("nginx", r),
        )
        vs_d = f"{r.rps / d.rps:.2f}" if d and d.rps else "-"
        vs_n = f"{r.rps / n.rps:.2f}" if n and n.rps else "-"
        p50_n = f"{r.p50_ms / n.p50_ms:.2f}" if n and n.p50_ms else "-"
        lines.append(
            f"| {r.mode} | {r.proto} | {r.concurrency} | {r.target} | {r.rps:.0f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {vs_d} | {vs_n} | {p50_n} | "
            f"{r.failed} |"
        )
        summary.append(
            {**asdict(r), "rps_vs_direct": vs_d, "rps_vs_nginx": vs_n, "p50_vs_nginx": p50_n}
        )
    lines += [
        "",
        "(h1 `direct` is the reference for the h2c rows: the backend speaks only HTTP/1.1.)",
        "",
        "## Router decision time (pure function, one core)",
        "",
        "| upstreams | µs per decision |",
        "|---|---|",
    ]
    lines += [f"| {n} | {us:.1f} |" for n, us in router.items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "overhead.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "duration_s": duration,
                "rows": summary,
                "router_us_per_decision": {str(k): v for k, v in router.items()},
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))
    print(f"\nwrote {RESULTS / 'overhead.md'} and overhead.json")


if __name__ == "__main__":
    main()
