"""bench/overhead.py's results as Markdown and JSON: one table per mode, the price of the
defaults (geogate vs geogate-lean), each proxy's idle CPU and the router's decision time."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.overhead_cells import Row
from bench.proc_cpu import CLK_TCK
from bench.results_io import write_results

RES_SHOWN = 0.05  # a CPU figure's ± is printed when the tick error is above 5 % of it
ECS_PAIR = ("geogate-ecs", "geogate")  # the price of log.format = "ecs" over the text format


def _find(rows: Sequence[Row], target: str, r: Row, proto: str | None = None) -> Row | None:
    key = (r.mode, proto or r.proto, r.concurrency)
    return next(
        (x for x in rows if x.target == target and (x.mode, x.proto, x.concurrency) == key), None
    )


def _direct(rows: Sequence[Row], r: Row) -> Row | None:
    # The backend speaks only HTTP/1.1: its h1 row is the reference for the h2c rows too.
    return _find(rows, "direct", r) or _find(rows, "direct", r, "h1")


def _ratio(a: float | None, b: float | None) -> str:
    ok = a is not None and b and not math.isnan(a) and not math.isnan(b)
    return f"{a / b:.2f}" if ok and a is not None and b else "-"


def _vs(r: Row, ref: Row | None, attr: str) -> str:
    """r's attr over ref's, as a ratio."""
    return _ratio(getattr(r, attr), getattr(ref, attr)) if ref else "-"


def _cpu(r: Row) -> str:
    if r.cpu_ms_per_req is None:
        return "-"
    text = f"{r.cpu_ms_per_req:.3f}"
    if r.cpu_res_ms and r.cpu_res_ms > RES_SHOWN * r.cpu_ms_per_req:
        text += f" ±{r.cpu_res_ms:.3f}"
    return text


def _fine(r: Row) -> str:
    """CPU µs per request from schedstat's nanoseconds: a stream's few hundred µs is a small
    part of a 10 ms tick, so the ticks' figure moves by a third with the clock."""
    return "-" if r.cpu_fine_ms_per_req is None else f"{r.cpu_fine_ms_per_req * 1000:.0f}"


def _failed(r: Row) -> str:
    if not r.failed:
        return "0"
    why = ", ".join(f"{k}: {v}" for k, v in r.failures.items())
    return f"{r.failed} ({why})" if why else str(r.failed)


def _non_streaming(rows: Sequence[Row]) -> list[str]:
    out = [
        "| proto | conc | target | req/s | p50 ms | p99 ms | CPU ms/req | rps vs direct | "
        "rps vs nginx | p50 vs nginx | CPU vs nginx | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, n = _direct(rows, r), _find(rows, "nginx", r)
        out.append(
            f"| {r.proto} | {r.concurrency} | {r.target} | {r.rps:.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {_cpu(r)} | {_vs(r, d, 'rps')} | "
            f"{_vs(r, n, 'rps')} | {_vs(r, n, 'p50_ms')} | "
            f"{_vs(r, n, 'cpu_ms_per_req')} | {_failed(r)} |"
        )
    return out


def _streaming(rows: Sequence[Row]) -> list[str]:
    out = [
        "| proto | conc | target | TTFT p50 ms | TTFT p99 ms | TTFT p50 added vs direct ms | "
        "total p50 ms | total p99 ms | completed | failed | CPU ms/req | CPU vs nginx | "
        "CPU µs/req (ns clock) | vs nginx (ns clock) | load CPU busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, n = _direct(rows, r), _find(rows, "nginx", r)
        added = (
            f"{r.ttft_p50_ms - d.ttft_p50_ms:+.2f}"
            if d and d is not r and d.ttft_p50_ms and r.ttft_p50_ms
            else "-"
        )
        busy = f"{r.load_cpu_busy:.0%}" if r.load_cpu_busy is not None else "-"
        out.append(
            f"| {r.proto} | {r.concurrency} | {r.target} | {r.ttft_p50_ms:.2f} | "
            f"{r.ttft_p99_ms:.2f} | {added} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.ok} | "
            f"{_failed(r)} | {_cpu(r)} | {_vs(r, n, 'cpu_ms_per_req')} | "
            f"{_fine(r)} | {_vs(r, n, 'cpu_fine_ms_per_req')} | {busy} |"
        )
    return out


def knob_price(
    rows: Sequence[Row], target: str = "geogate", base: str = "geogate-lean"
) -> list[dict[str, Any]]:
    """``target`` (geogate: the defaults) against ``base`` (geogate-lean), cell by cell; the
    keys say default and lean whichever pair it is."""
    out = []
    for r in rows:
        lean = _find(rows, base, r) if r.target == target else None
        if lean is None:
            continue
        item: dict[str, Any] = {"mode": r.mode, "proto": r.proto, "concurrency": r.concurrency}
        if r.mode == "non-streaming" and lean.rps:
            item["rps_default"], item["rps_lean"] = r.rps, lean.rps
            item["throughput_cost"] = 1 - r.rps / lean.rps
        if r.cpu_ms_per_req and lean.cpu_ms_per_req:
            item["cpu_ms_default"], item["cpu_ms_lean"] = r.cpu_ms_per_req, lean.cpu_ms_per_req
            item["cpu_ratio"] = r.cpu_ms_per_req / lean.cpu_ms_per_req
        if r.ttft_p50_ms is not None and lean.ttft_p50_ms is not None:
            item["ttft_p50_default"], item["ttft_p50_lean"] = r.ttft_p50_ms, lean.ttft_p50_ms
        out.append(item)
    return out


def _knobs(
    price: list[dict[str, Any]],
    pair: tuple[str, str] = ("geogate", "geogate-lean"),
    labels: tuple[str, str] = ("default", "lean"),
    what: str = "the defaults",
) -> list[str]:
    a, b = labels
    if not price:
        return [f"({pair[0]} and {pair[1]} were not both run.)"]
    out = [
        f"| mode | proto | conc | req/s {a} / {b} | throughput cost | "
        f"CPU ms/req {a} / {b} | CPU ratio | TTFT p50 ms {a} / {b} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in price:
        rps = f"{k['rps_default']:.0f} / {k['rps_lean']:.0f}" if "rps_lean" in k else "-"
        cost = f"{k['throughput_cost']:.0%}" if "throughput_cost" in k else "-"
        cpu = f"{k['cpu_ms_default']:.3f} / {k['cpu_ms_lean']:.3f}" if "cpu_ratio" in k else "-"
        ratio = f"{k['cpu_ratio']:.2f}" if "cpu_ratio" in k else "-"
        ttft = (
            f"{k['ttft_p50_default']:.2f} / {k['ttft_p50_lean']:.2f}"
            if "ttft_p50_lean" in k
            else "-"
        )
        out.append(
            f"| {k['mode']} | {k['proto']} | {k['concurrency']} | {rps} | {cost} | {cpu} | "
            f"{ratio} | {ttft} |"
        )
    costs = [k["throughput_cost"] for k in price if "throughput_cost" in k]
    ratios = [k["cpu_ratio"] for k in price if "cpu_ratio" in k]
    if costs:
        out += [
            "",
            f"Throughput {what} cost (1 - {a}/{b} req/s), non-streaming cells: "
            f"{min(costs):.0%} to {max(costs):.0%}.",
        ]
    if ratios:
        out += [
            f"CPU per request with {what}: {min(ratios):.2f}x to {max(ratios):.2f}x "
            f"{b}'s, all cells."
        ]
    return out


def _row_doc(rows: Sequence[Row], r: Row) -> dict[str, Any]:
    d, n = _direct(rows, r), _find(rows, "nginx", r)
    return {
        **asdict(r),
        "rps_vs_direct": _vs(r, d, "rps"),
        "rps_vs_nginx": _vs(r, n, "rps"),
        "p50_vs_nginx": _vs(r, n, "p50_ms"),
        "cpu_vs_nginx": _vs(r, n, "cpu_ms_per_req"),
        "cpu_fine_vs_nginx": _vs(r, n, "cpu_fine_ms_per_req"),  # schedstat's nanoseconds
    }


def write(
    rows: list[Row], router: dict[int, tuple[float, float]], meta: dict[str, Any], out: Path
) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
    paced = meta["paced_backend"]
    lines = [
        "# geogate overhead benchmark",
        "",
        f"Machine: {machine}. Proxies pinned to CPU 0; backend and load generator share CPU 1. "
        "Ratios compare targets measured in this same run; absolute numbers vary between "
        "machines and runs.",
        "",
        "## What ran",
        "",
        "| target | configuration |",
        "|---|---|",
        *(f"| {t} | {c} |" for t, c in meta["configs"].items()),
        "",
        *(
            line
            for name, text in meta.get("peer_configs", {}).items()
            for line in (f"{name}:", "", "```yaml", text.rstrip(), "```", "")
        ),
        "CPU ms/req: utime + stime of the proxy's process tree (/proc/PID/stat) over the "
        "measured part of the cell, divided by the requests done in it; it includes the "
        "proxy's background work (see idle CPU below). ± is shown where the clock-tick "
        "error exceeds 5 %.",
        "",
        "## Non-streaming",
        "",
        f"Backend answers at once (16 tokens, no pacing): per-request overhead, and req/s is "
        f"each proxy's ceiling. h2load, 1 thread; about {meta['duration_s']:g} s per cell "
        "after a calibration run that is also the warm-up.",
        "",
        *_non_streaming([r for r in rows if r.mode == "non-streaming"]),
        "",
        "## Streaming",
        "",
        f"Backend paced like a model server: first token after {paced['ttft_ms']:g} ms, then "
        f"{paced['tokens']} tokens at {paced['tokens_per_s']:g} tokens/s, one SSE event each. "
        "req/s is bounded by concurrency / stream time, so it is not shown (it is in the "
        "JSON). Client: bench/paced_load.py (asyncio, framing by hand; 16 streams per h2c "
        f"connection), {meta['warmup_s']:g} s warm-up then a {meta['duration_s']:g} s window; "
        "TTFT is request sent -> first content token; p99 of fewer than 100 streams "
        "(completed) is their maximum. load CPU busy: backend + client CPU over the window, as "
        "a share of CPU 1 (near 100 % means the rig, not the proxy, set the latency).",
        "",
        *_streaming([r for r in rows if r.mode == "streaming"]),
        "",
        "(h1 `direct` is the reference for the h2c rows: the backend speaks only HTTP/1.1.)",
        "",
        "## Price of the defaults: geogate (access log + GeoIP) vs geogate-lean",
        "",
        *_knobs(knob_price(rows)),
        "",
        '## Price of ECS logs: geogate-ecs (log.format = "ecs") vs geogate (text)',
        "",
        *_knobs(knob_price(rows, *ECS_PAIR), ECS_PAIR, ("ecs", "text"), "ECS logs"),
        "",
        "## Idle CPU (health probes, load polling; ms of CPU per second, no requests)",
        "",
        f"Read over {meta['idle_s']:g} s per mode, in clock ticks of {1000 / CLK_TCK:g} ms: "
        f"± {1000 / CLK_TCK / meta['idle_s']:.0f} ms/s per process.",
        "",
        "| mode | " + " | ".join(next(iter(meta["idle_cpu_ms_per_s"].values()), {})) + " |",
        "|---|" + "---|" * len(next(iter(meta["idle_cpu_ms_per_s"].values()), {})),
        *(
            f"| {mode} | " + " | ".join(f"{v:.1f}" for v in idle.values()) + " |"
            for mode, idle in meta["idle_cpu_ms_per_s"].items()
        ),
        "",
        "## Router decision time (pure function, one core)",
        "",
        "| upstreams | µs per decision (rank and pick) | µs per request, ranking memoised |",
        "|---|---|---|",
        *(f"| {n} | {us:.1f} | {memo:.1f} |" for n, (us, memo) in router.items()),
    ]
    doc = {
        "machine": machine,
        **meta,
        "rows": [_row_doc(rows, r) for r in rows],
        "price_of_defaults": knob_price(rows),
        "price_of_ecs_logs": knob_price(rows, *ECS_PAIR),
        "router_us_per_decision": {str(k): v[0] for k, v in router.items()},
        "router_us_per_request_memoised": {str(k): v[1] for k, v in router.items()},
    }
    write_results(out, lines, doc)  # with the commit it ran from, as every other benchmark
