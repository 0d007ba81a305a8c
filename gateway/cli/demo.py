"""``geogate demo``: the quickstart, on loopback only, in well under a minute.

Three simulated regions, one gateway with origin ``client``, and a GeoIP database that places
loopback source addresses (127.0.0.N) in five cities. Requests go out "from" each city, then a
region's backend is killed under load, then a residency rule shows its teeth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.cli.errors import CLIError
from gateway.cli.procs import (
    PortPicker,
    geogate_cmd,
    interruptible,
    kill,
    log_tail,
    regions_toml,
    route_field,
    spawn,
    stop_all,
    uninterrupted,
    wait_http,
)
from gateway.cli.workdir import work_folder
from gateway.http.headers import ROUTE_HEADER
from geodb.build import build_from_rows
from geodb.distance import est_rtt_ms
from geodb.regions import known_region

MODEL = "demo-llm"


@dataclass(frozen=True)
class City:
    name: str
    addr: str
    country: str
    continent: str
    lat: float
    lon: float


CITIES = (
    City("London", "127.0.0.2", "GB", "EU", 51.51, -0.13),
    City("Singapore", "127.0.0.3", "SG", "AS", 1.35, 103.82),
    City("New York", "127.0.0.4", "US", "NA", 40.71, -74.01),
    City("Sydney", "127.0.0.5", "AU", "OC", -33.87, 151.21),
    City("São Paulo", "127.0.0.6", "BR", "SA", -23.55, -46.63),
)
REGIONS = ("eu-central", "ap-southeast", "us-east")  # from geodb's table of known regions
LOAD_REQUESTS = 300
LOAD_CONCURRENCY = 12
DEMO_OPERATOR = "demo"
TRICKLE_S = 600  # --keep-running: a few requests a second from the five cities for 10 minutes,
# so the dashboard's map, charts and sparklines have something to show; then it goes quiet


def _config(ports: dict[str, int], gw_port: int, ops_port: int, db: Path, token: str) -> str:
    lines = [
        "[gateway]",
        'region = "eu-central"',
        'origin = "client"',
        "",
        "[server]",
        f"port = {gw_port}",
        "access_log = false",
        "",
        "[health]",
        "interval_s = 0.5",
        "timeout_s = 0.5",
        "unhealthy_threshold = 1",
        "",
        "[ops]",
        f"port = {ops_port}",
        "",
        "[admin]",  # the dashboard's login: an operator made for this run
        f'tokens = {{ {DEMO_OPERATOR} = "{token}" }}',
        "",
        "[geoip]",
        f'database = "{db}"',
        "",
        "[[residency]]",
        'name = "eu-stays-in-eu"',
        'continents = ["EU"]',
        'regions = ["eu-central"]',
        "",
    ]
    lines.append(regions_toml(*REGIONS))
    for rid, port in ports.items():
        lines += [
            "[[upstreams]]",
            f'id = "{rid}-1"',
            f'region = "{rid}"',
            f'url = "http://127.0.0.1:{port}"',
            f'models = ["{MODEL}"]',
            "",
        ]
    return "\n".join(lines)


@dataclass
class Result:
    city: City
    status: int
    route: str
    ms: float
    error: str = ""

    def field(self, key: str) -> str:
        return route_field(self.route, key)


async def _ask(gw: str, city: City, stream: bool = False) -> Result:
    conn = aiohttp.TCPConnector(local_addr=(city.addr, 0), force_close=True)
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": f"hello from {city.name}"}],
        "stream": stream,
    }
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        async with s.post(f"{gw}/v1/chat/completions", json=body) as r:
            if stream:
                await r.read()
                return Result(city, r.status, r.headers.get(ROUTE_HEADER, ""), 0.0)
            data = await r.json()
            ms = (time.perf_counter() - t0) * 1000
            err = data.get("error", {}).get("message", "") if r.status != 200 else ""
            return Result(city, r.status, r.headers.get(ROUTE_HEADER, ""), ms, err)


def _table(results: list[Result], title: str) -> None:
    print(f"\n{title}")
    head = (
        "client city (source addr)",
        "region served",
        "why",
        "est. network RTT*",
        "measured on loopback",
    )
    rows = []
    for r in results:
        region = r.field("region")
        if r.status == 200 and region in REGIONS:
            k = known_region(region)
            rtt = f"{est_rtt_ms(r.city.lat, r.city.lon, k.latitude, k.longitude):.0f} ms"
            why = r.field("reason") + (
                f" + residency {r.field('residency')}" if r.field("residency") != "-" else ""
            )
        else:
            region, rtt, why = f"HTTP {r.status}", "-", "refused: see below"
        rows.append((f"{r.city.name} ({r.city.addr})", region, why, rtt, f"{r.ms:.1f} ms"))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        if r.status != 200:
            print(f"  {r.city.name} got HTTP {r.status}: {r.error}")


async def _load(gw: str, cities: list[City], total: int) -> tuple[int, dict[str, int]]:
    """``total`` requests at LOAD_CONCURRENCY; returns (failed, served per region)."""
    failed = 0
    served: dict[str, int] = {}
    queue = list(range(total))

    async def worker(city: City) -> None:
        nonlocal failed
        while queue:
            queue.pop()
            r = await _ask(gw, city)
            if r.status != 200:
                failed += 1  # its route header names the region that failed it: not served
                continue
            region = r.field("region")
            served[region] = served.get(region, 0) + 1

    await asyncio.gather(*(worker(cities[i % len(cities)]) for i in range(LOAD_CONCURRENCY)))
    return failed, served


async def _until_unhealthy(ops: str, region: str, within_s: float = 10.0) -> None:
    """Poll the gateway's routing table (on its ops listener) until its probes have seen the
    region go down."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(f"{ops}/routing-table") as r:
                table = await r.json()
            if not any(x["healthy"] for x in table["regions"] if x["id"] == region):
                return
            await asyncio.sleep(0.05)
    raise CLIError(f"demo: the gateway still sees {region} as healthy after {within_s:g} s")


async def _scenario(gw: str, ops: str, sims: dict[str, subprocess.Popen[bytes]]) -> None:
    results = [await _ask(gw, c) for c in CITIES]
    _table(results, "1. Each city is served by the region nearest to it:")
    print(
        "  * estimated from great-circle distance (rtt ≈ 10 ms + 0.0153 ms/km), not measured:"
        "\n    everything here runs on loopback, so the last column is gateway + backend time."
    )

    americas = [c for c in CITIES if c.continent in ("NA", "SA")]
    print(
        f"\n2. Killing the us-east backend while {LOAD_REQUESTS} requests from New York and "
        f"São Paulo run at concurrency {LOAD_CONCURRENCY} ..."
    )
    load = asyncio.ensure_future(_load(gw, americas, LOAD_REQUESTS))
    await asyncio.sleep(0.3)
    kill(sims["us-east"])
    failed, served = await load
    print(f"   served by region: {json.dumps(served)}; failed requests: {failed}")
    _table([await _ask(gw, c) for c in CITIES], "   After the failover:")

    print("\n3. Residency: rule eu-stays-in-eu keeps European clients in eu-central.")
    print("   Killing the eu-central backend too: London is refused rather than sent abroad,")
    print("   everyone else moves on.")
    kill(sims["eu-central"])
    await _until_unhealthy(ops, "eu-central")
    _table([await _ask(gw, c) for c in CITIES], "   With only ap-southeast left:")


def _dashboard_login(ops: str, token: str) -> str:
    return (
        f"\nDashboard: {ops}/dashboard\n"
        f"  log in with the admin token {token}  (operator {DEMO_OPERATOR!r}, made for this run)"
    )


async def _trickle(gw: str, gw_proc: subprocess.Popen[bytes], seconds: float) -> None:
    """A request a second from each city (streams: the dashboard shows their first-token
    times) while the gateway runs, for ``seconds`` at most."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and gw_proc.poll() is None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await asyncio.gather(*(_ask(gw, c, stream=True) for c in CITIES))
        await asyncio.sleep(1.0)


def _sim(port: int, rid: str, *knobs: str) -> list[str]:
    return geogate_cmd(
        "sim-backend", "--port", str(port), "--region", rid, "--model", MODEL, *knobs
    )


def _still_up(gw: str, ops: str, token: str) -> None:
    print(
        f"\nThe gateway is still up at {gw} (Ctrl-C stops it). Try, as a Londoner:\n"
        f"  curl --interface 127.0.0.2 -i {gw}/v1/chat/completions \\\n"
        f'       -d \'{{"model": "{MODEL}", "messages": '
        '[{"role": "user", "content": "hi"}]}\'\n'
        f"  curl {ops}/routing-table   # the ops listener: loopback only\n"
        + _dashboard_login(ops, token),
        flush=True,
    )


def _run(
    work: Path, procs: dict[str, subprocess.Popen[bytes]], keep_running: bool, port: int
) -> None:
    """Everything the demo starts goes into ``procs`` as it starts: the caller stops them."""
    t0 = time.monotonic()
    db = work / "demo-cities.mmdb"
    build_from_rows(
        [
            (c.name, [f"{c.addr}/32", c.country, c.continent, str(c.lat), str(c.lon), c.name])
            for c in CITIES
        ],
        db,
    )
    pick = PortPicker(given={port})  # --port is not handed to a backend, nor to ops
    ports = {rid: pick() for rid in REGIONS}
    gw_port, ops_port = port or pick(), pick()
    for rid, p in ports.items():
        procs[rid] = spawn(
            _sim(p, rid, "--ttft-ms", "20", "--tokens-per-s", "400"), work / f"sim-{rid}.log"
        )
    cfg = work / "gateway.toml"
    token = secrets.token_urlsafe(18)  # per run: a demo left running is not open to anyone
    cfg.write_text(_config(ports, gw_port, ops_port, db, token))
    for rid, p in ports.items():
        wait_http(f"http://127.0.0.1:{p}/health", proc=procs[rid], log=work / f"sim-{rid}.log")
    log = work / "gateway.log"
    procs["gateway"] = gw_proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), log)
    gw, ops = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{ops_port}"
    wait_http(f"{gw}/readyz", proc=gw_proc, log=log)
    print(
        f"geogate demo: 3 simulated regions, gateway at {gw} (origin=client), "
        f"GeoIP {db.name}; logs in {work} (removed if the demo ends well)"
    )
    if keep_running:  # open it now and watch the failover below happen on the map
        print(_dashboard_login(ops, token), flush=True)
    sims = {rid: procs[rid] for rid in REGIONS}
    try:
        asyncio.run(_scenario(gw, ops, sims))
    except (aiohttp.ClientError, OSError) as exc:  # the gateway gone in the middle of it
        raise CLIError(f"demo: the gateway stopped answering ({exc}); {log_tail(log)}") from None
    print(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
    if not keep_running:
        return
    # The regions the story killed back up, a trickle of requests for the dashboard, and the
    # gateway up until Ctrl-C (or SIGTERM, SIGHUP), or until it exits.
    _still_up(gw, ops, token)
    for rid in ("us-east", "eu-central"):  # bring the killed regions back
        procs[rid] = spawn(_sim(ports[rid], rid), work / f"sim-{rid}.log")
    asyncio.run(_trickle(gw, gw_proc, TRICKLE_S))
    while gw_proc.poll() is None:
        time.sleep(0.5)


def run_demo(keep_running: bool = False, port: int = 0) -> None:
    # Ctrl-C is how the demo is stopped. A shell starts background jobs with SIGINT ignored,
    # and Python keeps an inherited "ignore": take it back, or the demo cannot be stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # SIGTERM and SIGHUP (kill, a closed terminal) as Ctrl-C: the `finally:` runs. Its logs
    # and database are kept only when something went wrong or it was stopped (every run left
    # a folder in /tmp), and then it says where.
    with interruptible(), work_folder("geogate-demo-") as work:
        try:
            _run(work, procs, keep_running, port)
        finally:
            # The end, or Ctrl-C: no client is left to drain for, so SIGINT (no drain), and
            # all together rather than one after another, a second Ctrl-C ignored meanwhile.
            with uninterrupted():
                stop_all(list(procs.values()), signal.SIGINT)
