#!/usr/bin/env python3
"""µs per call of the pieces of a proxied request's path, in process: steadier than CPU per
request under load on a shared machine, and it runs against any source tree, so a before/after
pair comes from one sitting:

  .venv/bin/python bench/hotpath.py                      # this tree
  git archive HEAD | tar -x -C /tmp/base && .venv/bin/python bench/hotpath.py --tree /tmp/base

Each piece as the proxy calls it, in the benchmark's default config (bench/overhead.py's
gateway_conf: a GeoIP database that every lookup hits): locate and route, the model from the
body, the request id, the metrics the request path updates, and the app's dispatch of a
proxied request to the proxy (Starlette's stack, or the fast path where the tree has one).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

N = 5000


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from bench.overhead import gateway_conf
    from gateway.config_file import load_config
    from gateway.http.headers import request_id

    # model_of lives in gateway.http.body_model since round twenty-three; a tree from before
    # (--tree) has it in gateway.http.intake.
    moved = (args.tree / "gateway" / "http" / "body_model.py").exists()
    where = "gateway.http.body_model" if moved else "gateway.http.intake"
    model_of = importlib.import_module(where).model_of
    from gateway.runtime import build_runtime

    work = Path(tempfile.mkdtemp(prefix="geogate-hotpath-"))
    # No server runs here: any engine will do, and an older tree's gateway_conf needs one named.
    cfg = load_config(gateway_conf(work, 8000, 9000, "granian"))
    rt = build_runtime(cfg)
    doc = {"model": "bench-model", "max_tokens": 16, "stream": False}
    body = json.dumps({**doc, "messages": [{"role": "user", "content": "hi"}]}).encode()
    peer = _ip("127.0.0.1")
    m = rt.metrics
    bound = hasattr(m, "child")  # trees with Metrics.child (round two to five); else labels()
    older: Any = m  # this tree's Metrics has no child(): typed as any tree's

    stream_label = "stream" in getattr(m.first_byte, "labelnames", ())

    def child(metric: Any, *values: str) -> Any:
        return older.child(metric, *values) if bound else metric.labels(*values)

    def labels() -> None:
        child(m.requests, "200", "eu").inc()
        child(m.duration, "eu").observe(0.01)
        child(m.by_country, "DE", "geoip").inc()
        child(m.attempts, "sim", "ok").inc()
        # The stream label since round sixteen; older trees' histogram has the region alone.
        child(m.first_byte, "eu", *(["true"] if stream_label else [])).observe(0.01)

    pieces: dict[str, Callable[[], Any]] = {
        "locate_and_route (client ip, GeoIP, router)": lambda: rt.locate_and_route(
            "127.0.0.1", [], "bench-model", time.monotonic(), edge_header=None, host="h:1"
        ),
        "GeoIP lookup alone (address parsed)": lambda: rt.geo.locate(peer),
        "model_of (JSON body, 90 bytes)": lambda: model_of(body),
        "request id (none sent)": lambda: request_id(None),
        "metrics: the 5 labelled updates": labels,
        "dispatch to the proxy (app -> gate)": _dispatch(),
        "access line, as configured (to a file)": _access_line(rt, work, batched=True),
        "access line, a write per line (StreamHandler)": _access_line(rt, work, batched=False),
        # Not per request: every load scrape, 4 a second per upstream per worker by default.
        "load scrape parsed (sim-backend's /metrics)": _scrape(),
    }
    print(f"tree: {args.tree}")
    for name, fn in pieces.items():
        fn()
        us = min(timeit.repeat(fn, number=N, repeat=3)) / N * 1e6
        print(f"{name:48} {us:8.2f} us")


def _access_line(rt: Any, work: Path, batched: bool) -> Callable[[], None]:
    """Exchange.log of a routed 200, to a file: through the tree's own access handler
    (``batched``), or through logging's StreamHandler, which writes and flushes each line."""
    import logging
    import time

    from gateway.http.exchange import Exchange
    from gateway.runtime import access_log, setup_logging

    setup_logging(rt.config.log)
    handler = access_log.handlers[0] if batched else logging.StreamHandler()
    handler.setFormatter(access_log.handlers[0].formatter)
    handler.setStream((work / f"access-{batched}.log").open("w"))  # type: ignore[attr-defined]
    scope = {"method": "POST", "path": "/v1/chat/completions", "http_version": "1.1"}
    ex = Exchange("0123456789abcdef0123456789abcdef", scope, time.perf_counter())
    ex.routed = rt.locate_and_route(
        "127.0.0.1", [], "bench-model", time.monotonic(), edge_header=None, host="h:1"
    )
    ex.status, ex.model, ex.upstream, ex.attempts = 200, "bench-model", "sim", 1
    ex.served_region = ex.region

    def one() -> None:
        saved = access_log.handlers[:]
        access_log.handlers[:] = [handler]
        ex.log(rt.config.log.format)
        access_log.handlers[:] = saved

    return one


def _scrape() -> Callable[[], Any]:
    """parse_load on the text the simulated backend serves at /metrics (its own registry:
    vLLM's gauges and TTFT histogram, with prometheus_client's _created samples)."""
    from prometheus_client import generate_latest

    from backend.sim_metrics import SimMetrics
    from gateway.routing.load import parse_load

    text = generate_latest(SimMetrics().registry).decode()
    return lambda: parse_load(text)


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def _dispatch() -> Callable[[], None]:
    """One proxied request through the app to a gate that answers at once (two sends)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    class Gate:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    async def ok(request: Any) -> Any:
        return None

    gate = Gate()
    routes = [Route(p, ok) for p in ("/healthz", "/readyz", "/v1/models", "/v1/models/{m:path}")]
    routes.append(Route("/v1/{path:path}", gate))
    try:
        from gateway.http.dispatch import GatewayApp

        app: Starlette = GatewayApp(gate, routes=routes)
    except ImportError:
        app = Starlette(routes=routes)
    loop = asyncio.new_event_loop()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    def one() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": [],
        }
        loop.run_until_complete(app(scope, receive, send))

    return one


if __name__ == "__main__":
    main()
