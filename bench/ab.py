#!/usr/bin/env python3
"""CPU per request of two or more proxies, A/B: each started once, then rounds that take turns
(h2load -n N -c C against each, HTTP/1.1, non-streaming; or, with ``--mode streaming``, paced
SSE streams from bench/paced_load.py for ``--window`` seconds, as bench/overhead.py's streaming
cells), the proxy's CPU per request taken per round, the median reported. Taking turns
spreads this VM's drift (another tenant, clock changes) over every target alike, where
bench/overhead.py's one cell per target can land in a quiet or a busy moment: use this one
to decide whether a change pays, overhead.py for the table against nginx and LiteLLM.

Targets: ``geogate`` (this tree, default config as bench/overhead.py's: access log, GeoIP),
``geogate@PATH`` (another source tree, e.g. `git archive HEAD` unpacked: a before/after pair
in one sitting), ``geogate%PYTHON`` or ``geogate@PATH%PYTHON`` (run by another interpreter,
whose venv has geogate's dependencies: `python3.12 -m venv V && V/bin/pip install -e .`;
the results record each one's version), or a floor of bench/peers.py (floor-uvicorn:
bench/floor_proxy.py on uvicorn's own httptools protocol; floor-h1: the same proxy on
gateway.h1's protocol, as geogate runs; floor-pipe: a byte pipe, no HTTP), or ``nginx``
(bench/overhead.py's).

  .venv/bin/python bench/ab.py --targets floor-uvicorn,floor-h1 --out bench/results/round5/h1_floor
  .venv/bin/python bench/ab.py --mode streaming --tokens 64 --targets nginx,floor-pipe,geogate

Proxies on CPU 0, the sim-backend and the load on CPU 1. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.sim_config import CLOCKS  # noqa: E402
from bench.overhead import (  # noqa: E402
    MODEL,
    PACED_TOKENS_PER_S,
    PACED_TTFT_MS,
    TOKENS,
    gateway_conf,
    start_nginx,
)
from bench.overhead_cells import LOAD_CPU, PROXY_CPU, paced, pinned  # noqa: E402
from bench.peers import FLOORS, start_floor  # noqa: E402
from bench.proc_cpu import (  # noqa: E402
    cpu_between,
    fine_between,
    idle_ms_per_s,
    process_tree,
    read_cpu,
)
from bench.results_io import params, write_results  # noqa: E402
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http  # noqa: E402

GEOGATE_TARGET = re.compile(r"geogate(?:@(?P<tree>[^%]+))?(?:%(?P<python>.+))?")


def geogate_target(target: str) -> tuple[Path, str | None]:
    """``geogate[@TREE][%PYTHON]`` (a name check_targets let through): the source tree it runs
    from (this one by default) and the interpreter that runs it (None: this one), as an
    absolute path (the target starts in TREE), not resolved (a venv's python is a link that
    must stay one)."""
    m = GEOGATE_TARGET.fullmatch(target)
    assert m is not None, target
    python = m["python"]
    return Path(m["tree"] or ROOT).resolve(), os.path.abspath(python) if python else None


def interpreters(targets: list[str]) -> dict[str, str]:
    """Each geogate target's Python version, for the results, asked of its interpreter as the
    target will run it (its tree first on the path). Raises OSError, before anything is
    measured, for one that cannot import the server, or that imports it from elsewhere than
    its tree (a tree without geogate: the venv's editable install would stand in for it)."""
    ask = "import gateway.server as g, platform; print(platform.python_version(), g.__file__)"
    out = {}
    for t in targets:
        if t.startswith("geogate"):
            tree, python = geogate_target(t)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            done = subprocess.run(
                [python or sys.executable, "-c", ask],
                capture_output=True,
                text=True,
                cwd=tree,
                env=env,
                timeout=60,
            )
            if done.returncode != 0:
                raise OSError(f"{t}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
            version, _, where = done.stdout.strip().partition(" ")
            if not Path(where).resolve().is_relative_to(tree):
                raise OSError(f"{t}: its interpreter imports geogate from {where}, not {tree}")
            out[t] = version
    return out


def start(
    work: Path, target: str, backend: int, env_more: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    name = target.replace("/", "_")
    if target.startswith("geogate"):
        tree, python = geogate_target(target)
        conf = gateway_conf(work, port, backend, name=name)
        # `-m gateway` from that tree; ``env_more``: this target's own (perf_split's -X perf)
        env = {**os.environ, "PYTHONPATH": str(tree), **(env_more or {})}
        gw = geogate_cmd("gateway", "--config", str(conf))
        gw[0] = python or gw[0]
        cmd = pinned(PROXY_CPU, gw)
        with (work / f"{name}.log").open("wb") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=tree, env=env)
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=p)
        return p, port
    if target == "nginx":
        return start_nginx(work, port, free_port(), backend), port
    p = start_floor(work, target, backend, port, pinned(PROXY_CPU, []))
    wait_http(f"http://127.0.0.1:{port}/health", proc=p)  # any path is proxied
    return p, port


Ports = dict[str, tuple[int, list[int]]]  # target -> (its port, its process tree)
DIRECT = "direct"  # the sim-backend itself, as a target where a caller allows it


def check_positive(ap: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Each named option above 0 (else argparse's one line, before anything starts)."""
    for name in names:
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be above 0, not {getattr(args, name)}")


def check_targets(ap: argparse.ArgumentParser, names: str, direct: bool = False) -> list[str]:
    """The comma-separated targets, each known and named once (else argparse's one line).
    ``direct``: the sim-backend itself may be one (rig gives its port and process)."""
    targets = names.split(",")
    for t in targets:
        if not (
            GEOGATE_TARGET.fullmatch(t) or t in FLOORS or t == "nginx" or (direct and t == DIRECT)
        ):
            known = ", ".join(FLOORS)
            also = f"{DIRECT}, " if direct else ""
            ap.error(
                f"unknown target {t!r}: {also}geogate, geogate@TREE, geogate%PYTHON, "
                f"geogate@TREE%PYTHON, nginx or one of {known}"
            )
    if len(set(targets)) != len(targets):
        ap.error("name each target once")
    return targets


@contextmanager
def rig(
    targets: list[str],
    streaming: bool,
    tokens: int,
    tokens_per_s: float,
    clock: str = "stream",
    env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[tuple[Path, Ports]]:
    """The sim-backend on the load CPU (paced when ``streaming``) and every target in front
    of it, started; yields the request body's file and each target's port and processes, and
    stops them all on the way out. ``env``: more environment for a geogate target, by name."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backend = free_port()
        sim = geogate_cmd("sim-backend", "--port", str(backend), "--model", MODEL)
        sim += ["--tokens", str(tokens)]
        if streaming:
            sim += ["--ttft-ms", str(PACED_TTFT_MS), "--tokens-per-s", str(tokens_per_s)]
            sim += ["--clock", clock]
        procs = [spawn(pinned(LOAD_CPU, sim), work / "sim.log")]
        try:
            wait_http(f"http://127.0.0.1:{backend}/health", proc=procs[0])
            body = work / "body.json"
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            stream = {"stream": True} if streaming else {}
            body.write_text(json.dumps({**chat, **stream, "max_tokens": tokens}))
            ports: Ports = {}
            for target in targets:
                if target == DIRECT:  # no proxy: the backend's own port
                    ports[target] = (backend, process_tree(procs[0].pid))
                    continue
                p, port = start(work, target, backend, (env or {}).get(target))
                procs.append(p)
                ports[target] = (port, process_tree(p.pid))
            yield body, ports
        finally:
            for p in procs:
                stop(p)


def in_turn(ports: Ports, r: int) -> list[tuple[str, tuple[int, list[int]]]]:
    """Round ``r``'s order: each round the other way round than the last, so that a drift in
    time favours no target's place in the round."""
    order = list(ports.items())
    return order if r % 2 == 0 else order[::-1]


def geogate_trees(targets: list[str]) -> dict[str, str]:
    """The other source trees measured (geogate@PATH), for write_results to stamp."""
    return {t: str(geogate_target(t)[0]) for t in targets if t.startswith("geogate@")}


def requests(url: str, body: Path, n: int, conc: int, log: Path | None = None) -> None:
    """``n`` non-streaming requests of ``body`` to ``url``, ``conc`` at a time (h2load over
    HTTP/1.1, on the load CPU); exits, in one line, unless every one succeeded. ``log``:
    h2load writes each request's status and latency there."""
    cmd = ["h2load", "--h1", "-t", "1", "-n", str(n), "-c", str(conc), "-m", "1", "-d"]
    cmd += [str(body), "-H", "content-type: application/json", url]
    if log is not None:
        cmd[1:1] = ["--log-file", str(log)]
    out = subprocess.run(pinned(LOAD_CPU, cmd), capture_output=True, text=True, timeout=300)
    if f"{n} succeeded" not in out.stdout:
        raise SystemExit(f"h2load against {url}: not all {n} requests succeeded")


def one_round(
    port: int, tree: list[int], body: Path, args: argparse.Namespace
) -> tuple[float, float | None, float]:
    """The proxy's CPU µs per request over one round from /proc's 10 ms ticks, the same from
    schedstat's nanoseconds (None where the kernel gives none), and the requests per second."""
    if args.mode == "streaming":
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        row = paced(url, body.read_bytes(), "h1", args.conc, args.window, tree, [])
        if row.failed or not row.rps:
            raise SystemExit(f"streams against port {port}: {row.failed} failed ({row.failures})")
        fine_ms = row.cpu_fine_ms_per_req
        return (
            (row.cpu_ms_per_req or 0.0) * 1000,
            None if fine_ms is None else fine_ms * 1000,
            row.rps,
        )
    n = args.requests
    before = read_cpu(tree)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    t0 = time.perf_counter()
    requests(url, body, n, args.conc)
    took = time.perf_counter() - t0
    after = read_cpu(tree)
    fine = fine_between(before, after)
    ticks = cpu_between(before, after)[0] / n * 1e6
    return ticks, None if fine is None else fine / n * 1e6, n / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="floor-uvicorn,floor-h1")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=20000, help="per target per round")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--mode", choices=("non-streaming", "streaming"), default="non-streaming")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="per answer (streaming: paced)")
    ap.add_argument("--window", type=float, default=8.0, help="streaming: seconds per round")
    ap.add_argument("--tokens-per-s", type=float, default=PACED_TOKENS_PER_S, help="streaming")
    ap.add_argument("--clock", choices=CLOCKS, default="stream", help="streaming: the sim's")
    ap.add_argument(
        "--idle", type=float, default=10.0, help="seconds each proxy's idle CPU is read for"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ab")
    args = ap.parse_args()
    # This process is the streaming load's client (bench/paced_load.py runs in it): on the
    # load CPU with the sim, off the proxies' (as bench/overhead.py puts it).
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    targets = check_targets(ap, args.targets)
    check_positive(ap, args, "rounds", "requests", "conc", "tokens", "window", "tokens_per_s")
    check_positive(ap, args, "idle")
    try:  # before any measuring: an interpreter that cannot run fails here, in one line
        versions = interpreters(targets)
    except (OSError, subprocess.TimeoutExpired) as exc:
        ap.error(f"a geogate target's interpreter did not run: {exc}")
    # Per target, each round's (ticks µs, nanoseconds µs or None, requests/s).
    rounds: dict[str, list[tuple[float, float | None, float]]] = {t: [] for t in targets}
    idle: dict[str, float] = {}
    idle_fine = False
    streaming = args.mode == "streaming"
    with rig(targets, streaming, args.tokens, args.tokens_per_s, args.clock) as (body, ports):
        for r in range(args.rounds + 1):
            for target, (port, tree) in in_turn(ports, r):
                measured = one_round(port, tree, body, args)
                if r:  # round 0 warms every target up
                    rounds[target].append(measured)
            if r == 0:  # after traffic, as in a run: the dashboard's windows are filled
                trees = {t: tree for t, (_, tree) in ports.items()}
                idle, idle_fine = idle_ms_per_s(trees, args.idle)
    # One clock for the whole run: nanoseconds only if every round of every target has them.
    fine = all(f is not None for rs in rounds.values() for _, f, _ in rs)
    per_round = {
        t: [round(f if fine and f is not None else us, 1) for us, f, _ in rs]
        for t, rs in rounds.items()
    }
    rates = {t: [round(rps, 2) for _, _, rps in rs] for t, rs in rounds.items()}
    busy = {
        t: [
            round(us - idle[t] * 1000 / rps, 1)
            for us, (_, _, rps) in zip(per_round[t], rs, strict=True)
        ]
        for t, rs in rounds.items()
    }
    report(args, targets, per_round, busy, idle, idle_fine, rates, fine, versions)


def what(args: argparse.Namespace) -> str:
    if args.mode == "streaming":
        return (
            f"Paced streams (first token after {PACED_TTFT_MS} ms, then {args.tokens} at "
            f"{args.tokens_per_s:g} tokens/s on {CLOCKS[args.clock]}), "
            f"HTTP/1.1, c = {args.conc}, a {args.window:g} s window per target per round "
            "(bench/paced_load.py): µs of CPU per stream"
        )
    return (
        f"Non-streaming, HTTP/1.1, c = {args.conc}, {args.requests} requests per target per "
        "round (h2load)"
    )


def report(
    args: argparse.Namespace,
    targets: list[str],
    per_round: dict[str, list[float]],
    busy: dict[str, list[float]],
    idle: dict[str, float],
    idle_fine: bool,
    rates: dict[str, list[float]],
    fine: bool,
    versions: dict[str, str],
) -> None:
    medians = {t: statistics.median(v) for t, v in per_round.items()}
    busy_medians = {t: statistics.median(v) for t, v in busy.items()}
    first = targets[0]
    lines = [
        "# CPU per request, A/B in alternating rounds (bench/ab.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}. {what(args)}, {args.rounds} rounds after one "
        "warm-up; proxies on CPU 0, sim-backend and the load on CPU 1. Idle: each proxy's CPU "
        f"with no requests, read for {args.idle:g} s after the warm-up round (health probes, "
        "load polling, the dashboard's sampler; "
        + (
            "in nanoseconds"
            if idle_fine
            else f"in clock ticks of 10 ms, so ±{10 / args.idle:g} ms/s"
        )
        + "); less idle: each round's CPU per request without that idle "
        "rate's share (idle ms/s over the round's requests/s, kept per round in the JSON). "
        + (
            "CPU per request from schedstat's nanoseconds (bench/proc_cpu.py)."
            if fine
            else "CPU per request from /proc's 10 ms ticks (this kernel keeps no schedstat)."
        ),
        "",
        f"| target | median µs/request | vs {first} | idle ms/s | less idle, median µs "
        f"| vs {first} | each round |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        rounds = ", ".join(f"{v:.0f}" for v in per_round[t])
        b = busy_medians[t]
        lines.append(
            f"| {t} | {medians[t]:.1f} | {medians[t] / medians[first]:.2f} | {idle[t]:.1f} "
            f"| {b:.1f} | {b / busy_medians[first]:.2f} | {rounds} |"
        )
    doc = {
        "params": params(args),
        "per_round_us": per_round,
        "median_us": medians,
        "idle_ms_per_s": idle,
        "less_idle_per_round_us": busy,
        "less_idle_median_us": busy_medians,
        "requests_per_s_per_round": rates,
        "clock": "schedstat ns" if fine else "ticks",
        "idle_clock": "schedstat ns" if idle_fine else "ticks",
        "python": versions,
    }
    # Per round: how far the ratio moves with the VM (a round at 0 µs, in 10 ms ticks, skipped).
    zipped = {t: zip(per_round[t], per_round[first], strict=True) for t in targets[1:]}
    pairs = {t: [v / f for v, f in z if f > 0] for t, z in zipped.items()}
    doc["ratio_per_round"] = pairs
    spread = "; ".join(
        f"{t} {statistics.median(r):.2f} ({min(r):.2f} to {max(r):.2f})"
        for t, r in pairs.items()
        if r
    )
    if spread:
        lines += ["", f"Each round's ratio to {first}, median (range): {spread}."]
    if any("%" in t for t in targets):
        which = ", ".join(f"{t}: Python {v}" for t, v in versions.items())
        lines += ["", f"Interpreters: {which}."]
    write_results(args.out, lines, doc, trees=geogate_trees(targets))


if __name__ == "__main__":
    main()
