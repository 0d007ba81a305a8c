#!/usr/bin/env python3
"""Gateway overhead, against peers in the same run, with each target's configuration stated.

Targets, all in front of the same simulated backend (geogate sim-backend, HTTP/1.1):
  direct        the backend itself (the floor)
  geogate       geogate gateway, DEFAULT config: the uvicorn engine (HTTP/1.1 only, so no
                h2c rows), access log on (a line per request on stderr, i.e. its log file, as
                in production) and a GeoIP City database (built here; 127.0.0.0/24, the
                load's source addresses, is in it, so every lookup hits a record)
  geogate-granian  the same on the granian engine (HTTP/1.1 and h2c): the engine geogate
                ran on before uvicorn was measured cheaper
  geogate-lean  the same with the two costly knobs off (server.access_log = false, no
                geoip.database): geogate / geogate-lean is the price of the defaults
  geogate-hc    geogate gateway, hypercorn engine (pure Python), default config as geogate
  geogate-ecs   geogate with log.format = "ecs" (access and event logs as ECS JSON):
                geogate-ecs / geogate is the price of ECS logs over the text format
  nginx         nginx as a plain reverse proxy (keep-alive upstream pool, buffering off) with
                its own default access log (combined format, to a file)
  litellm       only with --peers litellm: LiteLLM proxy, pinned, in its own virtualenv
                (.venv-litellm, installed on first use), configured lean (bench/peers.py); its
                YAML goes into the results. HTTP/1.1 only (uvicorn)
  floor-asgi    only with --peers floor-asgi: the smallest proxy on geogate's own stack
                (bench/floor_proxy.py: granian ASGI + gateway.client, nothing else); geogate minus
                floor-asgi is geogate's own code
  floor-rsgi    only with --peers floor-rsgi: the same on granian's native RSGI interface
  floor-h1      only with --peers floor-h1: the same ASGI proxy on uvicorn with gateway.h1's
                protocol, as geogate's default engine runs
  floor-uvicorn only with --peers floor-uvicorn: the same ASGI proxy on uvicorn (httptools),
                whose HTTP runs on the event loop's thread (granian's runs in Rust threads)
  floor-pipe    only with --peers floor-pipe: bench/pipe_proxy.py, a byte pipe on uvloop with
                no HTTP at all: what any Python proxy on this event loop pays at the least
  floor-pipe-parse  the same pipe, each upstream read also through httptools
Modes, protocols HTTP/1.1 and h2c (prior knowledge; the backend speaks only HTTP/1.1, so
direct has no h2c row) and concurrency 1, 16 and 128:
  non-streaming  the backend answers at once (16 tokens, no pacing): per-request overhead and
                 each proxy's ceiling in req/s. Load and latency from h2load's per-request log.
  streaming      the backend is paced like a model server: first token after 20 ms, then 16
                 tokens at 50 tokens/s (one SSE event each, about 330 ms a stream). 50
                 tokens/s is what one stream of a batched server typically gets (vLLM-class
                 servers under load and hosted APIs give 30-100). 100 tokens/s was measured
                 too and rejected: at c=128 it is 12,800 SSE events/s, and the backend plus
                 client on their one core (about 1.1 ms of CPU per stream together) then set
                 the latency: through nginx, TTFT p50 went from ~22 ms at c=16 to 43 ms (h1)
                 and 64 ms (h2c) at c=128, so the cell measured the rig. At 50 tokens/s the
                 same cells gave 26 ms with the rig 55-60 % busy (the md's "load CPU busy"
                 column says so per cell; both runs on this 2-core VM, shared). 20 ms is a
                 short prompt's prefill with no queue, kept short because it only shifts
                 every target's TTFT alike; 16 tokens keep a c=1 cell at ~12 streams in 4 s.
                 With paced streams req/s is bounded by concurrency / stream time, so the
                 columns are TTFT (request sent -> first content token) and total time
                 p50/p99, completed/failed and CPU per request. h2load cannot time a first
                 token per request, so bench/paced_load.py is the client here (asyncio
                 protocols for HTTP/1.1 and h2c, framing by hand), run by this script on CPU 1.
CPU per request: utime + stime of each proxy's process tree from /proc (bench/proc_cpu.py),
read around each cell's measured window, divided by the requests done in it; also as a ratio
to nginx, and each proxy's idle CPU (health probes, load polling) so c=1 cells can be read.
Proxies run on CPU 0; backend and load generator share CPU 1, the same for every target.
Also times the pure router's decision for 3, 30 and 300 upstreams.

Writes bench/results/overhead.{md,json} (or --out PREFIX). Run: scripts/dev bench
[--duration S] [--quick] [--modes ...] [--protos ...] [--conc ...] [--targets ...]
[--peers litellm,floor-asgi,floor-rsgi,floor-uvicorn,floor-h1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead_cells import (  # noqa: E402
    LOAD_CPU,
    PROXY_CPU,
    WARMUP_S,
    Row,
    h2load,
    missing_tool,
    paced,
    pinned,
)
from bench.overhead_cells import pct as pct  # noqa: E402  (re-exported: bench/streams.py)
from bench.overhead_report import write  # noqa: E402
from bench.peers import (  # noqa: E402
    FLOOR_DESCRIPTIONS,
    FLOORS,
    H1_ONLY_FLOORS,
    PEERS,
    describe,
    litellm_config,
    start_floor,
    start_litellm,
)
from bench.proc_cpu import idle_ms_per_s, process_tree  # noqa: E402
from gateway.cli.procs import (  # noqa: E402
    free_port,
    geogate_cmd,
    regions_toml,
    spawn,
    stop,
    wait_http,
)
from gateway.routing.memo import RankMemo  # noqa: E402
from gateway.routing.model import RegionPoint, RequestFacts, Snapshot, UpstreamView  # noqa: E402
from gateway.routing.policy import Policy  # noqa: E402
from gateway.routing.router import route  # noqa: E402
from geodb.build import build_from_rows  # noqa: E402
from geodb.location import Location  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL = "bench-model"
TOKENS = 16
PACED_TTFT_MS = 20.0  # see the module docstring for both pacing values
PACED_TOKENS_PER_S = 50.0
CONCURRENCY = (1, 16, 128)
MODES = ("non-streaming", "streaming")
PROTOS = ("h1", "h2c")
IDLE_S = 5.0  # each proxy's background CPU over this long (10 ms ticks: 2 ms/s resolution)
# The load's source addresses: h2load and bench/paced_load.py connect from 127.0.0.1, and
# bench/streams.py (which uses gateway_conf) from 127.0.0.1..N.
GEO_NETWORK = "127.0.0.0/24"
TARGETS = {
    "direct": "the sim-backend itself, no proxy",
    "geogate": "**default config**: uvicorn engine (uvloop, httptools; HTTP/1.1 only), access "
    f"log on (stderr, i.e. its log file), GeoIP City database ({GEO_NETWORK}, the load's "
    "source, in it: every lookup hits)",
    "geogate-granian": "granian engine (HTTP/1.1 and h2c), default config otherwise",
    "geogate-lean": "default engine, `server.access_log = false`, no `geoip.database` (every "
    "client at the default location): the two knobs off, to price them",
    "geogate-hc": "hypercorn engine, default config as geogate (h2c only: hypercorn's HTTP/1.1 "
    "status line has an empty reason phrase, which h2load counts as a failure)",
    "geogate-ecs": 'default config as geogate with `log.format = "ecs"`: the '
    "access log as ECS JSON (ecs-logging), to price it against geogate's text format",
    "nginx": "nginx, 1 worker, keep-alive upstream pool, `proxy_buffering off`, access log on "
    "(combined format to a file, `buffer=64k flush=1s`: written in batches, as geogate's is)",
    "litellm": describe(MODEL),  # only with --peers litellm (bench/peers.py installs it)
    **FLOOR_DESCRIPTIONS,  # only with --peers floor-asgi,floor-rsgi
}
GATEWAYS = (  # name, engine (None: the default), lean
    ("geogate", None, False),
    ("geogate-granian", "granian", False),
    ("geogate-lean", None, True),
    ("geogate-hc", "hypercorn", False),
    ("geogate-ecs", None, False),
)
# What each engine speaks: uvicorn (the default) HTTP/1.1 only; hypercorn-h11 sends
# "HTTP/1.1 200 " (ASGI has no reason phrase), which h2load counts as a failure, so hypercorn
# is measured on h2c only.
ENGINE_PROTOS: dict[str | None, tuple[str, ...]] = {
    None: ("h1",),
    "granian": ("h1", "h2c"),
    "hypercorn": ("h2c",),
}


def nginx_conf(work: Path, h1: int, h2: int, backend: int, access_log: bool = True) -> Path:
    """nginx as an operator runs it; access_log=True is nginx's default (combined format),
    written in batches as geogate's is (gateway.logs' BatchingStreamHandler, up to 0.35 s):
    unbuffered, nginx would pay a write(2) a request that geogate does not."""
    conf = work / "nginx.conf"
    buffered = f"access_log {work}/nginx-access.log combined buffer=64k flush=1s;"
    log = buffered if access_log else "access_log off;"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  {log}
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


def start_nginx(work: Path, h1: int, h2: int, backend: int) -> subprocess.Popen[bytes]:
    """nginx (nginx_conf) on the proxies' CPU, up and answering on ``h1``."""
    conf = nginx_conf(work, h1, h2, backend)
    p = spawn(pinned(PROXY_CPU, ["nginx", "-c", str(conf), "-p", str(work)]), work / "nginx.log")
    wait_http(f"http://127.0.0.1:{h1}/health", proc=p)
    return p


def bench_geoip(work: Path) -> Path:
    """A City database placing the load's source addresses in Frankfurt (once per work dir):
    the gateway then does a real lookup per request, and it hits. A /24 is as deep in the tree
    as most networks of a real GeoLite2 City file."""
    db = work / "bench-geoip.mmdb"
    if not db.exists():
        build_from_rows([("bench", [GEO_NETWORK, "DE", "EU", "50.11", "8.68", "Frankfurt"])], db)
    return db


def gateway_conf(
    work: Path,
    port: int,
    backend: int,
    engine: str | None = None,
    *,
    lean: bool = False,
    name: str = "",
    ecs: bool = False,
) -> Path:
    """geogate's default config (access log on, a GeoIP database), or with lean=True those two
    knobs off, or with ecs=True the logs as ECS JSON. Keys at their default are left out, so a
    caller may still set them (bench/streams.py's --gateway-set) without writing a duplicate
    key."""
    conf = work / f"gateway-{name or engine or 'default'}.toml"
    knobs = "access_log = false\n" if lean else ""
    geoip = "" if lean else f'[geoip]\ndatabase = "{bench_geoip(work)}"\n'
    geoip += '[log]\nformat = "ecs"\n' if ecs else ""
    conf.write_text(f"""
[gateway]
region = "eu-central"
origin = "self"
[server]
port = {port}
{f'engine = "{engine}"' if engine else ""}
{knobs}{geoip}
[ops]
port = {free_port()}
{regions_toml("eu-central")}
[[upstreams]]
id = "sim"
region = "eu-central"
url = "http://127.0.0.1:{backend}"
models = ["{MODEL}"]
""")
    return conf


def router_times() -> dict[int, tuple[float, float]]:
    """Median µs per decision, origin self, all upstreams serving the model: the router alone
    (rank and pick), and a request's share once the snapshot's ranking is memoised (the
    runtime's RankMemo: the key, a lookup and the pick within the band)."""
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
        memoised = functools.partial(RankMemo().route, facts, snap, policy, rng)
        hits = timeit.repeat(memoised, number=number, repeat=7)
        out[n] = (statistics.median(runs) / number * 1e6, statistics.median(hits) / number * 1e6)
    return out


def parse_args() -> argparse.Namespace:
    def names(allowed: Sequence[str]) -> Any:
        def parse(text: str) -> tuple[str, ...]:
            got = tuple(x.strip() for x in text.split(",") if x.strip())
            if bad := [x for x in got if x not in allowed]:
                raise argparse.ArgumentTypeError(f"{bad} not in {','.join(allowed)}")
            return got

        return parse

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="1 s per measurement, c=16 only")
    ap.add_argument("--modes", type=names(MODES), default=MODES, help=",".join(MODES))
    ap.add_argument("--protos", type=names(PROTOS), default=PROTOS, help=",".join(PROTOS))
    ap.add_argument(
        "--targets",
        type=names(tuple(TARGETS)),
        default=tuple(t for t in TARGETS if t not in PEERS),
        help=",".join(TARGETS),
    )
    ap.add_argument(
        "--peers", type=names(PEERS), default=(), help="also measure these: " + ",".join(PEERS)
    )
    ap.add_argument(
        "--conc",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=CONCURRENCY,
        help="concurrency levels, comma list (default 1,16,128)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead", help="writes OUT.md/.json")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.conc = 1.0, (16,)
    args.targets = (*args.targets, *(p for p in args.peers if p not in args.targets))
    return args


@dataclass
class Rig:
    """One mode's backend and proxies, started together and stopped together."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> proto -> port
    trees: dict[str, list[int]] = field(default_factory=dict)  # proxy -> its process tree
    backend: list[int] = field(default_factory=list)


def start_rig(work: Path, mode: str, targets: Sequence[str], rig: Rig) -> None:
    backend = free_port()
    sim = ["sim-backend", "--port", str(backend), "--model", MODEL, "--tokens", str(TOKENS)]
    if mode == "streaming":
        sim += ["--ttft-ms", str(PACED_TTFT_MS), "--tokens-per-s", str(PACED_TOKENS_PER_S)]
    p = spawn(pinned(LOAD_CPU, geogate_cmd(*sim)), work / f"sim-{mode}.log")
    rig.procs.append(p)
    wait_http(f"http://127.0.0.1:{backend}/health", proc=p)
    rig.backend = process_tree(p.pid)
    if "direct" in targets:
        rig.ports["direct"] = {"h1": backend}
    for name, engine, lean in GATEWAYS:
        if name not in targets:
            continue
        port = free_port()
        conf = gateway_conf(
            work, port, backend, engine, lean=lean, name=f"{name}-{mode}", ecs=name == "geogate-ecs"
        )
        p = spawn(
            pinned(PROXY_CPU, geogate_cmd("gateway", "--config", str(conf))),
            work / f"{name}-{mode}.log",
        )
        rig.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
        rig.ports[name] = {proto: port for proto in ENGINE_PROTOS[engine]}
        rig.trees[name] = process_tree(p.pid)
    if "nginx" in targets:
        h1, h2 = free_port(), free_port()
        p = start_nginx(work, h1, h2, backend)
        rig.procs.append(p)
        rig.ports["nginx"] = {"h1": h1, "h2c": h2}
        rig.trees["nginx"] = process_tree(p.pid)
    if "litellm" in targets:
        port = free_port()
        p = start_litellm(work, MODEL, backend, port, pinned(PROXY_CPU, []))
        rig.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=300, proc=p)
        rig.ports["litellm"] = {"h1": port}  # uvicorn: HTTP/1.1 only
        rig.trees["litellm"] = process_tree(p.pid)
    for name in FLOORS:
        if name in targets:
            port = free_port()
            p = start_floor(work, name, backend, port, pinned(PROXY_CPU, []))
            rig.procs.append(p)
            wait_http(f"http://127.0.0.1:{port}/health", proc=p)
            rig.ports[name] = {"h1": port} if name in H1_ONLY_FLOORS else {"h1": port, "h2c": port}
            rig.trees[name] = process_tree(p.pid)


def idle_cpu(rig: Rig) -> dict[str, float]:
    """ms of CPU per second each proxy spends with no requests (probes, load polling): the
    floor under a c=1 cell's CPU per request. In ticks, as this benchmark's cells are."""
    return idle_ms_per_s(rig.trees, IDLE_S, fine=False)[0]


def run_mode(work: Path, mode: str, args: argparse.Namespace, rows: list[Row]) -> dict[str, float]:
    rig = Rig()
    try:
        start_rig(work, mode, args.targets, rig)
        idle = idle_cpu(rig)
        doc = {
            "model": MODEL,
            "max_tokens": TOKENS,
            "stream": mode == "streaming",
            "messages": [{"role": "user", "content": "hi"}],
        }
        body = work / f"{mode}.json"
        body.write_text(json.dumps(doc))
        for proto in args.protos:
            for conc in args.conc:
                for target, ports in rig.ports.items():
                    if proto not in ports:
                        continue
                    url = f"http://127.0.0.1:{ports[proto]}/v1/chat/completions"
                    proxy = rig.trees.get(target, [])
                    if mode == "streaming":
                        row = paced(
                            url, body.read_bytes(), proto, conc, args.duration, proxy, rig.backend
                        )
                    else:
                        log = work / "h2load.log"
                        row = h2load(url, body, proto, conc, args.duration, log, proxy)
                    row.target, row.mode = target, mode
                    rows.append(row)
                    print(progress(row), flush=True)
    finally:
        for p in reversed(rig.procs):
            stop(p)
    return idle


def progress(r: Row) -> str:
    cpu = f"cpu {r.cpu_ms_per_req:6.3f} ms/req" if r.cpu_ms_per_req is not None else " " * 19
    if r.ttft_p50_ms is not None:
        lat = f"ttft p50 {r.ttft_p50_ms:6.2f} p99 {r.ttft_p99_ms:6.2f}  total p50 {r.p50_ms:7.2f}"
        lat += f" p99 {r.p99_ms:7.2f} ms  n {r.ok}"
    else:
        lat = f"{r.rps:8.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
    failed = f"  FAILED {r.failed} {r.failures or ''}" if r.failed else ""
    return f"{r.mode:13} {r.proto:3} c={r.concurrency:<3} {r.target:12} {lat}  {cpu}{failed}"


def main() -> None:
    args = parse_args()
    for tool in ("h2load", "nginx"):
        if problem := missing_tool(tool):
            sys.exit(problem)
    # This process is the streaming cells' client: it belongs on the load CPU, off the proxies'.
    if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset"):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    work = Path(tempfile.mkdtemp(prefix="geogate-bench-"))
    rows: list[Row] = []
    idle = {mode: run_mode(work, mode, args, rows) for mode in args.modes}
    router = router_times()
    meta = {
        "duration_s": args.duration,
        "warmup_s": min(WARMUP_S, args.duration),
        "idle_s": IDLE_S,
        "configs": {t: TARGETS[t] for t in args.targets},
        "paced_backend": {
            "ttft_ms": PACED_TTFT_MS,
            "tokens_per_s": PACED_TOKENS_PER_S,
            "tokens": TOKENS,
        },
        "idle_cpu_ms_per_s": idle,
        "peer_configs": (
            {"litellm.yaml": litellm_config(MODEL, "BACKEND_PORT")}
            if "litellm" in args.targets
            else {}
        ),
        "work_dir": str(work),
    }
    write(rows, router, meta, args.out)


if __name__ == "__main__":
    main()
