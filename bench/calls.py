#!/usr/bin/env python3
"""Python calls per paced stream, counted: a proxy served by this tree's code (geogate, or the
floor under it, floor-splice: gateway.h1, gateway.client and the splice, none of geogate's own
code) on uvicorn and uvloop with real sockets, a real sim-backend and bench/paced_load.py's
streams, with cProfile on for a window. A count does not drift with this VM's neighbours as CPU
time does (bench/ab.py's rounds spread ±20 %), so a change's effect on how much Python a stream
runs is seen in one run; whether that shows in CPU under load is bench/ab.py's and
bench/perf_split.py's to say. cProfile's own µs per stream are given too: the profiler's
overhead per call inflates them (about twice the real cost), so read them as shares.

  .venv/bin/python bench/calls.py [--targets geogate,floor-splice,geogate@/tmp/base]
      [--window 6] [--conc 16] [--out bench/results/calls]

Each target runs in a child process of its own (its tree first on sys.path), the server in the
child's main thread with cProfile, the sim-backend and the load in processes of their own on
the load CPU. Counted: every call in the window, over the streams that started in it (the
profiler is switched on and off in the server's loop as the window opens and closes: in a
steady load the calls of the streams still running at either end balance). Every stream must
end whole ([DONE]) or the run fails. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 16
TOP = 25  # functions listed per target
FLOOR = "floor-splice"
CHILD_SETUP_S = 120.0  # a child's start, warm-up and shut-down, on top of its window


def _server_app(target: str, work: Path, port: int, backend: int) -> tuple[Any, Any]:
    """The ASGI app to serve and the config its server takes its head caps from."""
    from bench.overhead import gateway_conf
    from gateway.config_file import load_config
    from gateway.runtime import setup_logging

    config = load_config(gateway_conf(work, port, backend))
    if target == FLOOR:
        import bench.floor_proxy as fp

        os.environ[fp.UPSTREAM_ENV] = f"http://127.0.0.1:{backend}"
        fp._SPLICE = True
        return fp.asgi, config
    from gateway.http.app import create_app

    setup_logging(config.log)
    return create_app(config), config


def child(target: str, window: float, conc: int) -> None:
    """Serve, count and print one JSON line (this target's calls per stream)."""
    import cProfile

    import uvicorn

    from bench.overhead import MODEL, PACED_TOKENS_PER_S, PACED_TTFT_MS
    from bench.overhead_cells import LOAD_CPU, PROXY_CPU, pinned
    from gateway import defaults as d
    from gateway.cli.procs import free_port, geogate_cmd, wait_http
    from gateway.h1 import capped
    from gateway.h1.server import Server

    work = Path(tempfile.mkdtemp(prefix="geogate-calls-"))
    backend, port = free_port(), free_port()
    sim_cmd = geogate_cmd("sim-backend", "--port", str(backend), "--model", MODEL)
    sim_cmd += ["--tokens", str(TOKENS), "--ttft-ms", str(PACED_TTFT_MS)]
    sim_cmd += ["--tokens-per-s", str(PACED_TOKENS_PER_S)]
    sim_log = (work / "sim.log").open("wb")
    sim = subprocess.Popen(pinned(LOAD_CPU, sim_cmd), stdout=sim_log, stderr=sim_log)
    try:
        wait_http(f"http://127.0.0.1:{backend}/health", proc=sim)
        os.sched_setaffinity(0, {int(PROXY_CPU)})
        app, config = _server_app(target, work, port, backend)
        profile = cProfile.Profile()
        state: dict[str, Any] = {"on": False, "streams": 0, "loop": None}

        def switch(on: bool) -> None:  # in the loop's thread: cProfile profiles the caller's
            (profile.enable if on else profile.disable)()
            state["on"] = on

        state["switch"] = switch

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            state["loop"] = asyncio.get_running_loop()
            if state["on"] and scope["type"] == "http":
                state["streams"] += 1
            await app(scope, receive, send)

        s = config.server
        server = Server(
            uvicorn.Config(
                counted,
                host="127.0.0.1",
                port=port,
                loop="uvloop",
                http=capped(
                    s.max_header_bytes, d.MAX_URL_BYTES, s.head_timeout_s, s.max_body_bytes
                ),
                lifespan="off" if target == FLOOR else "on",
                access_log=False,
                log_config=None,
                proxy_headers=False,
                server_header=False,
            )
        )
        load: dict[str, Any] = {}
        threading.Thread(
            target=_drive,
            args=(server, port, target == FLOOR, conc, window, state, load),
            daemon=True,
        ).start()
        server.run()
        if state["on"]:
            profile.disable()
    finally:
        sim.terminate()
        sim.wait()
    if load.get("failures", 1) or not state["streams"]:  # no report from the load: failed
        raise SystemExit(f"calls: {target}: streams failed or none counted: {load}")
    print(json.dumps(_per_stream(profile, state["streams"], os.getcwd())))


def _drive(
    server: Any,
    port: int,
    floor: bool,
    conc: int,
    window: float,
    state: dict[str, Any],
    out: dict[str, Any],
) -> None:
    """The paced load from a process of its own, once the server answers; its window marks
    switch the profiler."""
    from bench.overhead import MODEL
    from bench.overhead_cells import LOAD_CPU, pinned
    from gateway.cli.procs import wait_http

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body = json.dumps(chat | {"max_tokens": TOKENS})
    code = (
        f"import sys, asyncio; sys.path.insert(0, {str(ROOT)!r})\n"
        "from bench.paced_load import run_paced\n"
        f"r = asyncio.run(run_paced('http://127.0.0.1:{port}/v1/chat/completions', 'h1', "
        f"{conc}, {body.encode()!r}, 2.0, {window}, lambda: print('mark', flush=True)))\n"
        "print('done', r.completed_in_window, sum(r.failures.values()), flush=True)\n"
    )
    try:
        # geogate ready (its upstream probed healthy); the floor proxies any path to the sim
        wait_http(f"http://127.0.0.1:{port}/{'health' if floor else 'readyz'}")
        p = subprocess.Popen(
            pinned(LOAD_CPU, [sys.executable, "-c", code]), stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("mark"):  # the window's ends: the profiler on, then off
                state["loop"].call_soon_threadsafe(state["switch"], not state["on"])
            elif line.startswith("done"):
                _, completed, failures = line.split()
                out.update(completed=int(completed), failures=int(failures))
        p.wait()
    finally:
        server.should_exit = True


def _per_stream(profile: Any, streams: int, root: str) -> dict[str, Any]:
    """cProfile's counts over the streams: all calls, calls of Python functions (not C), the
    profiler's µs, and the top functions by their own µs."""
    import pstats

    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, own_s, _, _) in stats.items():
        short = path.replace(root + "/", "").split("site-packages/")[-1]
        where = "C" if path == "~" else f"{short}:{line}"
        rows.append((own_s, calls, f"{where}({name})", path != "~"))
    rows.sort(reverse=True)
    return {
        "streams": streams,
        "calls": sum(r[1] for r in rows) / streams,
        "python_calls": sum(r[1] for r in rows if r[3]) / streams,
        "profiled_us": sum(r[0] for r in rows) / streams * 1e6,
        "top": [
            {"function": f, "calls": c / streams, "profiled_us": s / streams * 1e6}
            for s, c, f, _ in rows[:TOP]
        ],
        # every function, by calls per stream: what a change added or removed is their diff
        "functions": {f: round(c / streams, 3) for _, c, f, _ in rows},
    }


def run_target(target: str, window: float, conc: int) -> dict[str, Any]:
    name, _, tree = target.partition("@")
    path = Path(tree).resolve() if tree else ROOT
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    cmd += ["--window", str(window), "--conc", str(conc)]
    env = {**os.environ, "PYTHONPATH": str(path)}
    limit = window + CHILD_SETUP_S
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=path, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"calls: {target}: no result within {limit:g} s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(f"calls: {target}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--targets", default=f"geogate,{FLOOR}")
    ap.add_argument("--window", type=float, default=6.0, help="seconds counted")
    ap.add_argument("--conc", type=int, default=16, help="streams in flight")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calls")
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.window, args.conc)
        return
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        name, at, tree = t.partition("@")
        if name not in ("geogate", FLOOR) or (at and name != "geogate"):
            ap.error(f"--targets: {t!r} is not geogate, geogate@PATH or {FLOOR}")
        if at and not (Path(tree) / "gateway").is_dir():
            ap.error(f"--targets: {t!r}: {tree} is not a geogate source tree")
    if args.window <= 0 or args.conc <= 0:
        ap.error("--window and --conc must be above 0")
    from bench.overhead import PACED_TOKENS_PER_S, PACED_TTFT_MS
    from bench.results_io import write_results

    results = {t: run_target(t, args.window, args.conc) for t in targets}
    lines = [
        "# Python calls per paced stream (bench/calls.py)",
        "",
        f"{TOKENS} tokens at {PACED_TOKENS_PER_S:g}/s, first after {PACED_TTFT_MS:g} ms, "
        f"HTTP/1.1, c = {args.conc}; cProfile on "
        f"the proxy for a {args.window:g} s window, over the streams that started in it. "
        "Calls: every function called (Python and C); Python: Python functions only (their "
        "frames are what the interpreter runs); profiled µs: the profiler's, about twice the "
        "real cost.",
        "",
        "| target | streams | calls | Python calls | profiled µs |",
        "|---|---|---|---|---|",
    ]
    for t, r in results.items():
        lines.append(
            f"| {t} | {r['streams']} | {r['calls']:.0f} | {r['python_calls']:.0f} "
            f"| {r['profiled_us']:.0f} |"
        )
    for t, r in results.items():
        lines += ["", f"Top functions by their own profiled µs, {t} (calls per stream, µs):", ""]
        lines += [
            f"- `{f['function']}`: {f['calls']:.1f}, {f['profiled_us']:.1f}" for f in r["top"]
        ]
    trees = {t: t.partition("@")[2] for t in targets if "@" in t}
    doc = {"window_s": args.window, "conc": args.conc, "tokens": TOKENS, "results": results}
    write_results(args.out, lines, doc, trees=trees or None)


if __name__ == "__main__":
    if "--child" not in sys.argv:  # a child imports its own tree, from PYTHONPATH
        sys.path.insert(0, str(ROOT))
    main()
