#!/usr/bin/env python3
"""Many concurrent paced SSE streams: geogate vs direct vs nginx (issue 9, "Scale").

For each count N (default 1,000 / 5,000 / 9,500) the load generator starts N streaming chat
completions, spread over --ramp-s seconds, against three targets in front of one simulated
backend (geogate sim-backend, paced at --ttft-ms and --tokens-per-s):
  direct    the backend itself (the floor)
  geogate   geogate gateway, default config (one uvicorn worker)
  nginx     nginx reverse proxy, proxy_buffering off, sized for 2 x N connections
Per target and N: streams completed / failed (and why), the peak number of streams that had
their response headers at once (did the target really hold N?), TTFT p50/p99 (request sent to
first content token), added inter-chunk delay p99 (gap between token arrivals minus the paced
gap), chunk transit p99 (backend emission to client arrival, from the backend's --stamp
comments), peak RSS and CPU seconds of the proxy's process tree.

The load generator is aiohttp (limit=0) in --procs processes, its connections bound to
--sources loopback addresses 127.0.0.1..N (ephemeral ports are per source address), with
RLIMIT_NOFILE raised to the hard limit. Loopback only. The gateway is started with the shell's
own descriptor limit, since raising it is the gateway's job (issue 9); the backend and nginx,
which are the rig, get the hard limit.

Writes bench/results/streams.{md,json} (or --out PREFIX).
Run: .venv/bin/python bench/streams.py [--counts 1000,5000,9500]
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import MODEL, gateway_conf, nginx_conf  # noqa: E402
from bench.overhead_cells import pct, pinned  # noqa: E402
from bench.proc_cpu import CLK_TCK, process_tree, stat_fields  # noqa: E402
from bench.results_io import params, write_results  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGETS = ("direct", "geogate", "nginx")
WARMUP_STREAMS = 20
# Time between forking the load generators and the first scheduled start: they are forked
# from this process (aiohttp already imported), so this only covers fork and event loop set-up.
START_MARGIN_S = 0.5


# --- load generator (runs in child processes) ---------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    url: str
    body: bytes
    starts: tuple[float, ...]  # epoch seconds, one per stream: shared clock across processes
    sources: tuple[str, ...]
    tokens: int
    tokens_per_s: float
    timeout_s: float
    cpus: tuple[int, ...] | None


@dataclass
class LoadResult:
    # One entry per stream; NaN where the stream never got that far. array('d') pickles as raw
    # bytes: 9,500 streams x 40 tokens of samples cross the pipe in milliseconds.
    sent: array[float] = field(default_factory=lambda: array("d"))
    headers: array[float] = field(default_factory=lambda: array("d"))
    ended: array[float] = field(default_factory=lambda: array("d"))
    ttft: array[float] = field(default_factory=lambda: array("d"))
    # One entry per token gap / per stamped token, all streams together.
    gaps: array[float] = field(default_factory=lambda: array("d"))
    transit: array[float] = field(default_factory=lambda: array("d"))
    completed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


async def _one(
    session: aiohttp.ClientSession, spec: LoadSpec, start: float, out: LoadResult
) -> None:
    await asyncio.sleep(max(0.0, start - time.time()))
    sent = time.time()
    head = math.nan
    arrivals: list[float] = []
    done = False
    reason = ""
    try:
        async with session.post(
            spec.url, data=spec.body, headers={"Content-Type": "application/json"}
        ) as resp:
            head = time.time()
            if resp.status != 200:
                await resp.read()
                reason = f"HTTP {resp.status}"
            else:
                buf = b""
                events = 0  # data events seen; chat: 0 is the role chunk, 1..tokens the tokens
                async for data in resp.content.iter_any():
                    # One clock read per read(): events that arrived together share it, which
                    # is what a client would see.
                    now = time.time()
                    buf += data
                    *complete, buf = buf.split(b"\n\n")
                    for ev in complete:
                        stamp = math.nan
                        if ev.startswith(b":"):  # the backend's "--stamp" comment line
                            nl = ev.find(b"\n")
                            if ev.startswith(b": t="):
                                stamp = float(ev[4:nl] if nl >= 0 else ev[4:])
                            ev = ev[nl + 1 :] if nl >= 0 else b""
                        if not ev:
                            continue
                        if ev == b"data: [DONE]":
                            done = True
                            continue
                        events += 1
                        if 2 <= events <= spec.tokens + 1:
                            arrivals.append(now)
                            if not math.isnan(stamp):
                                out.transit.append(now - stamp)
                if not done:
                    reason = "no [DONE]"
                elif len(arrivals) != spec.tokens:
                    reason = f"{len(arrivals)} of {spec.tokens} tokens"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
            reason += f" {errno.errorcode.get(exc.os_error.errno, exc.os_error.errno)}"
    out.sent.append(sent)
    out.headers.append(head)
    out.ended.append(time.time())
    out.ttft.append(arrivals[0] - sent if arrivals and not reason else math.nan)
    if reason:
        out.failures[reason] += 1
        return
    out.completed += 1
    paced = 1 / spec.tokens_per_s if spec.tokens_per_s else 0.0
    out.gaps.extend(b - a - paced for a, b in itertools.pairwise(arrivals))


async def _load(spec: LoadSpec) -> LoadResult:
    out = LoadResult()
    # One session per source address: each connector binds its sockets to its own 127.0.0.k,
    # so N streams need N / sources ephemeral ports per address, not N on one.
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(src, 0)),
            timeout=timeout,
            auto_decompress=False,
        )
        for src in spec.sources
    ]
    try:
        await asyncio.gather(
            *(
                _one(sessions[i % len(sessions)], spec, start, out)
                for i, start in enumerate(spec.starts)
            )
        )
    finally:
        for s in sessions:
            await s.close()
    return out


def _load_process(spec: LoadSpec, conn: Connection) -> None:
    raise_nofile()
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    cpu0 = time.process_time()
    try:
        import uvloop

        result = uvloop.run(_load(spec))
    except ImportError:
        result = asyncio.run(_load(spec))
    result.cpu_s = time.process_time() - cpu0
    conn.send(result)
    conn.close()


# --- process metrics from /proc -------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            f = stat_fields(p)
            total += (int(f[11]) + int(f[12])) / CLK_TCK  # utime + stime
        except (OSError, ValueError, IndexError):
            continue
    return total


def status_kib(pids: Sequence[int], key: str) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Reset VmHWM (Linux >= 4.0), so each row's peak is its own, not the run's so far."""
    try:
        for p in pids:
            Path(f"/proc/{p}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def nofile_soft(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return None


# --- one measurement -----------------------------------------------------------------------


@dataclass
class Row:
    target: str
    streams: int
    completed: int
    failed: int
    failures: dict[str, int]
    peak_streaming: int  # most streams with response headers and not yet ended, at one time
    ttft_p50_ms: float
    ttft_p99_ms: float
    added_gap_p50_ms: float
    added_gap_p99_ms: float
    transit_p50_ms: float
    transit_p99_ms: float
    proxy_peak_rss_mib: float | None
    proxy_idle_rss_mib: float | None  # the proxy's tree just before this row's load
    kib_per_stream: float | None  # (peak RSS - idle RSS) / peak streams held at once
    proxy_cpu_s: float | None
    backend_cpu_s: float
    loadgen_cpu_s: float
    wall_s: float


def peak_concurrency(starts: Sequence[float], ends: Sequence[float]) -> int:
    marks = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    peak = cur = 0
    for _, d in marks:
        cur += d
        peak = max(peak, cur)
    return peak


def run_row(
    target: str,
    url: str,
    n: int,
    args: argparse.Namespace,
    body: bytes,
    proxy: subprocess.Popen[bytes] | None,
    backend: subprocess.Popen[bytes],
    load_cpus: tuple[int, ...] | None,
    baseline_kib: float | None = None,
) -> Row:
    """One row. baseline_kib: the proxy's RSS before any load (the warm-up row's idle RSS);
    per-stream memory is counted from it, since memory a row frees is kept by the allocators
    and the next row's idle reading would hide it."""
    sources = tuple(f"127.0.0.{k}" for k in range(1, args.sources + 1))
    t0 = time.time() + START_MARGIN_S
    starts = [t0 + args.ramp_s * j / n for j in range(n)]
    procs = max(1, min(args.procs, n))
    ctx = multiprocessing.get_context("fork")
    proxy_pids = process_tree(proxy.pid) if proxy else []
    hwm_reset = reset_peak_rss(proxy_pids)
    idle_kib = status_kib(proxy_pids, "VmRSS")
    cpu_proxy0, cpu_backend0 = cpu_seconds(proxy_pids), cpu_seconds([backend.pid])
    sampled_rss = 0
    conns, workers = [], []
    for w in range(procs):
        spec = LoadSpec(
            url,
            body,
            tuple(starts[w::procs]),
            sources,
            args.tokens,
            args.tokens_per_s,
            args.timeout_s,
            load_cpus,
        )
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_load_process, args=(spec, send), daemon=True)
        p.start()
        send.close()
        conns.append(recv)
        workers.append(p)
    results: list[LoadResult] = []
    pending = list(conns)
    while pending:
        # Poll between results: a sampled RSS as well, in case clear_refs is not allowed.
        for c in wait(pending, timeout=0.2):
            assert isinstance(c, Connection)
            try:
                results.append(c.recv())
            except EOFError:
                results.append(LoadResult(failures=Counter({"load generator died": n // procs})))
            pending.remove(c)
        if proxy_pids:
            sampled_rss = max(sampled_rss, status_kib(proxy_pids, "VmRSS"))
    for p in workers:
        p.join()
    wall = time.time() - t0
    rss: float | None = None
    cpu_proxy: float | None = None
    if proxy:
        hwm = status_kib(proxy_pids, "VmHWM") if hwm_reset else 0
        rss = max(hwm, sampled_rss) / 1024
        cpu_proxy = cpu_seconds(proxy_pids) - cpu_proxy0
    merged = LoadResult()
    for r in results:
        for name in ("sent", "headers", "ended", "ttft", "gaps", "transit"):
            getattr(merged, name).extend(getattr(r, name))
        merged.completed += r.completed
        merged.failures.update(r.failures)
        merged.cpu_s += r.cpu_s
    opened = [
        (h, e) for h, e in zip(merged.headers, merged.ended, strict=True) if not math.isnan(h)
    ]
    ttft = [x * 1000 for x in merged.ttft if not math.isnan(x)]
    peak = peak_concurrency([h for h, _ in opened], [e for _, e in opened])
    # Per stream held, not per stream asked for: streams refused or failed hold nothing.
    base = idle_kib if baseline_kib is None else baseline_kib
    per_stream = (rss * 1024 - base) / peak if rss is not None and peak else None
    gaps = [x * 1000 for x in merged.gaps]
    transit = [x * 1000 for x in merged.transit]
    return Row(
        target=target,
        streams=n,
        completed=merged.completed,
        failed=n - merged.completed,
        failures=dict(merged.failures.most_common()),
        peak_streaming=peak,
        ttft_p50_ms=pct(ttft, 0.5),
        ttft_p99_ms=pct(ttft, 0.99),
        added_gap_p50_ms=pct(gaps, 0.5),
        added_gap_p99_ms=pct(gaps, 0.99),
        transit_p50_ms=pct(transit, 0.5),
        transit_p99_ms=pct(transit, 0.99),
        proxy_peak_rss_mib=rss,
        proxy_idle_rss_mib=idle_kib / 1024 if proxy else None,
        kib_per_stream=per_stream,
        proxy_cpu_s=cpu_proxy,
        backend_cpu_s=cpu_seconds([backend.pid]) - cpu_backend0,
        loadgen_cpu_s=merged.cpu_s,
        wall_s=wall,
    )


# --- targets --------------------------------------------------------------------------------


def with_nofile(args: list[str]) -> list[str]:
    """Run args with the soft descriptor limit at the hard one (for the rig's processes)."""
    return ["sh", "-c", 'ulimit -Sn "$(ulimit -Hn)" && exec "$@"', "sh", *args]


def on_cpus(cpus: str | None, args: list[str]) -> list[str]:
    return pinned(cpus, args) if cpus else args


def somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


def streams_nginx_conf(work: Path, h1: int, h2: int, backend: int, streams: int) -> Path:
    """bench/overhead.py's nginx, sized as an operator would for this many streams."""
    conf = nginx_conf(work, h1, h2, backend)
    text = conf.read_text()
    # Every stream is two connections in nginx (client + upstream): worker_connections counts
    # both, and so does the descriptor limit. The listen backlog defaults to 511 on Linux.
    connections = 2 * streams + 1024
    edits = {
        "worker_processes 1;": f"worker_processes 1;\nworker_rlimit_nofile {connections};",
        "worker_connections 4096;": f"worker_connections {connections};",
        f"listen 127.0.0.1:{h1};": f"listen 127.0.0.1:{h1} backlog={somaxconn()};",
    }
    for old, new in edits.items():
        if old not in text:
            raise SystemExit(f"bench: bench/overhead.py's nginx config changed; no {old!r}")
        text = text.replace(old, new)
    conf.write_text(text)
    return conf


def gateway_config(work: Path, port: int, backend: int, sets: Sequence[str]) -> Path:
    """bench/overhead.py's gateway config (defaults), plus --gateway-set TABLE.KEY=VALUE."""
    conf = gateway_conf(work, port, backend)
    text = conf.read_text()
    for item in sets:
        dotted, sep, value = item.partition("=")
        table, dot, key = dotted.strip().rpartition(".")
        if not (sep and dot and table and key):
            raise SystemExit(f"bench: --gateway-set wants TABLE.KEY=TOML_VALUE, not {item!r}")
        header = f"[{table}]\n"
        line = f"{key} = {value.strip()}\n"
        # Into the existing table if the file has it (a second [server] is a TOML error).
        text = text.replace(header, header + line, 1) if header in text else text + header + line
    conf.write_text(text)
    return conf


def cpu_layout(pin: bool) -> tuple[str | None, str | None, tuple[int, ...] | None]:
    """(proxy, backend, load generator) CPUs: the proxy gets a core of its own, as in
    bench/overhead.py, so its numbers are not the load generator's."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or not shutil.which("taskset"):
        return None, None, None
    load = tuple(cpus[2:]) or (cpus[1],)
    return str(cpus[0]), str(cpus[1]), load


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--counts", default="1000,5000,9500", help="concurrent streams, comma list")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--ttft-ms", type=float, default=200.0, help="backend time to first token")
    ap.add_argument("--tokens-per-s", type=float, default=20.0, help="backend pacing per stream")
    ap.add_argument("--tokens", type=int, default=40, help="content tokens per stream")
    ap.add_argument(
        "--ramp-s",
        type=float,
        default=1.0,
        help="spread the N starts over this long; keep it under ttft + tokens/rate, or the "
        "first streams end before the last start",
    )
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per stream, connect included")
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.1..N")
    ap.add_argument("--settle-s", type=float, default=3.0, help="pause between measurements")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--sim-args", default="", help="extra sim-backend arguments (one string)")
    ap.add_argument(
        "--gateway-set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="gateway config value, TOML syntax (repeatable): server.max_streams=12000",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "streams", help="results path prefix")
    args = ap.parse_args()
    args.counts = [int(c) for c in args.counts.split(",") if c.strip()]
    args.targets = [t for t in args.targets.split(",") if t.strip()]
    if bad := set(args.targets) - set(TARGETS):
        ap.error(f"unknown targets: {', '.join(sorted(bad))}")
    if not 1 <= args.sources <= 254:
        ap.error("--sources must be 1..254 (127.0.0.1..127.0.0.254)")
    if args.tokens < 1 or not args.counts or min(args.counts) < 1:
        ap.error("--tokens and --counts must be positive")
    return args


def main() -> None:
    args = parse_args()
    if "nginx" in args.targets and not shutil.which("nginx"):
        sys.exit("bench: nginx not found; scripts/dev bench installs it, or drop it: --targets")
    # Only this process and its load generators: the servers are started with their own
    # limits (see with_nofile), so the gateway is measured with what the shell gives it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    load_nofile = raise_nofile()
    top = max(args.counts)
    if load_nofile < top // max(1, args.procs) + 256:
        sys.exit(f"bench: descriptor limit {load_nofile} cannot hold {top} client sockets")
    proxy_need = 2 * top + 256  # client socket + upstream socket per stream, plus its own
    if hard != resource.RLIM_INFINITY and hard < proxy_need:
        print(
            f"bench: note: hard descriptor limit {hard} < {proxy_need}, what a proxy needs "
            f"for {top} streams (client + upstream socket each)",
            flush=True,
        )
    proxy_cpu, backend_cpu, load_cpus = cpu_layout(not args.no_pin)
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": args.tokens,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()

    work = Path(tempfile.mkdtemp(prefix="geogate-streams-"))
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[Row] = []
    gateway_nofile: int | None = None
    try:
        port = free_port()
        sim_cmd = geogate_cmd(
            "sim-backend",
            "--port",
            str(port),
            "--model",
            MODEL,
            "--ttft-ms",
            f"{args.ttft_ms:g}",
            "--tokens-per-s",
            f"{args.tokens_per_s:g}",
            "--tokens",
            str(args.tokens),
            "--stamp",  # emission time per event: chunk transit, backend to client
            *shlex.split(args.sim_args),
        )
        backend = spawn(on_cpus(backend_cpu, with_nofile(sim_cmd)), work / "sim.log")
        procs.append(backend)
        wait_http(f"http://127.0.0.1:{port}/health", proc=backend)
        targets: dict[str, tuple[str, subprocess.Popen[bytes] | None]] = {}
        path = "/v1/chat/completions"
        if "direct" in args.targets:
            targets["direct"] = (f"http://127.0.0.1:{port}{path}", None)
        if "geogate" in args.targets:
            gw = free_port()
            conf = gateway_config(work, gw, port, args.gateway_set)
            p = spawn(
                on_cpus(proxy_cpu, geogate_cmd("gateway", "--config", str(conf))),
                work / "geogate.log",
            )
            procs.append(p)
            wait_http(f"http://127.0.0.1:{gw}/readyz", proc=p)
            targets["geogate"] = (f"http://127.0.0.1:{gw}{path}", p)
            gateway_nofile = min(
                (x for x in map(nofile_soft, process_tree(p.pid)) if x is not None), default=None
            )
        if "nginx" in args.targets:
            h1, h2 = free_port(), free_port()
            conf = streams_nginx_conf(work, h1, h2, port, top)
            p = spawn(
                on_cpus(proxy_cpu, with_nofile(["nginx", "-c", str(conf), "-p", str(work)])),
                work / "nginx.log",
            )
            procs.append(p)
            wait_http(f"http://127.0.0.1:{h1}/health", proc=p)
            targets["nginx"] = (f"http://127.0.0.1:{h1}{path}", p)

        duration = args.ttft_ms / 1000 + args.tokens / args.tokens_per_s if args.tokens_per_s else 0
        print(
            f"streams: {args.tokens} tokens at {args.tokens_per_s:g}/s after {args.ttft_ms:g} ms "
            f"(~{duration:.1f} s each), starts spread over {args.ramp_s:g} s; load generator "
            f"descriptors {load_nofile}, gateway {gateway_nofile}; logs in {work}",
            flush=True,
        )
        baseline: dict[str, float | None] = {}
        for target, (url, proxy) in targets.items():  # warm-up: pools, imports, caches
            w = run_row(target, url, WARMUP_STREAMS, args, body, proxy, backend, load_cpus)
            idle = w.proxy_idle_rss_mib
            baseline[target] = idle * 1024 if idle is not None else None
        for n in args.counts:
            print(
                f"-- {n} streams: {n * args.tokens_per_s:,.0f} token events/s at the peak",
                flush=True,
            )
            for target, (url, proxy) in targets.items():
                time.sleep(args.settle_s)
                row = run_row(
                    target, url, n, args, body, proxy, backend, load_cpus, baseline[target]
                )
                rows.append(row)
                print(summary_line(row), flush=True)
                if proxy is not None and proxy.poll() is not None:
                    print(f"bench: {target} exited ({proxy.returncode}); see {work}", flush=True)
    finally:
        for p in reversed(procs):
            stop(p)
    write(rows, args, (soft, hard), load_nofile, gateway_nofile)


def _ms(x: float) -> str:
    return "-" if x != x else f"{x:.1f}"


def summary_line(r: Row) -> str:
    why = ", ".join(f"{k}: {v}" for k, v in r.failures.items())
    proxy = (
        f"  RSS {r.proxy_peak_rss_mib:.0f} MiB ({_ms(r.kib_per_stream or math.nan)} KiB/stream)"
        f"  CPU {r.proxy_cpu_s:.1f} s"
        if r.proxy_peak_rss_mib is not None and r.proxy_cpu_s is not None
        else ""
    )
    return (
        f"{r.streams:>6} {r.target:8} ok {r.completed:>5}  failed {r.failed:>5}  "
        f"peak {r.peak_streaming:>5}  TTFT p50 {_ms(r.ttft_p50_ms)} p99 {_ms(r.ttft_p99_ms)} ms  "
        f"+gap p99 {_ms(r.added_gap_p99_ms)} ms  transit p99 {_ms(r.transit_p99_ms)} ms"
        f"{proxy}{'  (' + why + ')' if why else ''}"
    )


def _ratio(x: float, base: float | None, floor: float = 0.0) -> str:
    # A ratio to a near-zero floor (an added gap of 0.1 ms direct) says nothing: leave it out.
    if base is None or base != base or x != x or base <= floor:
        return "-"
    return f"{x / base:.2f}"


def write(
    rows: list[Row],
    args: argparse.Namespace,
    nofile: tuple[int, int],
    load_nofile: int,
    gateway_nofile: int | None,
) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    direct = {r.streams: r for r in rows if r.target == "direct"}
    lines = [
        "# Concurrent paced SSE streams",
        "",
        f"Machine: {machine}. Backend: geogate sim-backend, {args.tokens} tokens at "
        f"{args.tokens_per_s:g} tokens/s after a {args.ttft_ms:g} ms TTFT; N stream starts "
        f"spread over {args.ramp_s:g} s; load generator: aiohttp in {args.procs} process(es), "
        f"{args.sources} source addresses, {args.timeout_s:g} s per-stream timeout.",
        f"Descriptor limits: shell soft {nofile[0]} / hard {nofile[1]}; load generator, "
        f"backend and nginx {load_nofile}; gateway {gateway_nofile} (as started: raising it is "
        f"the gateway's job). net.core.somaxconn {somaxconn()}. nginx: worker_connections and "
        "worker_rlimit_nofile 2 x N + 1024, listen backlog = somaxconn, proxy_buffering off. "
        "geogate: default config"
        + (f" plus {', '.join(args.gateway_set)}" if args.gateway_set else "")
        + ".",
        "Peak = most streams holding response headers at once. +gap = token arrival gap minus "
        "the paced gap. Transit = backend emission to client arrival. RSS and CPU: the "
        "proxy's process tree during the measurement; idle RSS just before the row's load; "
        "KiB/stream = (peak RSS - the proxy's RSS before any load) / peak streams held. "
        "Ratios: vs direct at the same N.",
        "",
        "| N | target | completed | failed | peak | TTFT p50 ms | TTFT p99 ms | "
        "p50 vs direct | p99 vs direct | +gap p99 ms | +gap vs direct | transit p99 ms | "
        "peak RSS MiB | idle RSS MiB | KiB/stream | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out_rows = []
    for r in rows:
        d = direct.get(r.streams)
        ratios = {
            "ttft_p50_vs_direct": _ratio(r.ttft_p50_ms, d.ttft_p50_ms if d else None),
            "ttft_p99_vs_direct": _ratio(r.ttft_p99_ms, d.ttft_p99_ms if d else None),
            "added_gap_p99_vs_direct": _ratio(
                r.added_gap_p99_ms, d.added_gap_p99_ms if d else None, floor=0.5
            ),
        }
        rss = f"{r.proxy_peak_rss_mib:.0f}" if r.proxy_peak_rss_mib is not None else "-"
        cpu = f"{r.proxy_cpu_s:.1f}" if r.proxy_cpu_s is not None else "-"
        idle = f"{r.proxy_idle_rss_mib:.0f}" if r.proxy_idle_rss_mib is not None else "-"
        kib = f"{r.kib_per_stream:.1f}" if r.kib_per_stream is not None else "-"
        lines.append(
            f"| {r.streams} | {r.target} | {r.completed} | {r.failed} | {r.peak_streaming} | "
            f"{_ms(r.ttft_p50_ms)} | {_ms(r.ttft_p99_ms)} | {ratios['ttft_p50_vs_direct']} | "
            f"{ratios['ttft_p99_vs_direct']} | {_ms(r.added_gap_p99_ms)} | "
            f"{ratios['added_gap_p99_vs_direct']} | {_ms(r.transit_p99_ms)} | {rss} | "
            f"{idle} | {kib} | {cpu} |"
        )
        # NaN is not JSON: a missing percentile is null.
        plain = {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(r).items()}
        out_rows.append({**plain, **ratios})
    failures = [f"- {r.streams} {r.target}: {r.failures}" for r in rows if r.failures]
    if failures:
        lines += ["", "Failures by cause:", "", *failures]
    write_results(
        args.out,
        lines,
        {
            "machine": machine,
            "params": params(args),
            "nofile": {
                "shell_soft": nofile[0],
                "shell_hard": nofile[1],
                "load_generator": load_nofile,
                "gateway": gateway_nofile,
            },
            "somaxconn": somaxconn(),
            "rows": out_rows,
        },
    )


if __name__ == "__main__":
    main()
