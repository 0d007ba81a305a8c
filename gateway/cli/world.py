"""``geogate world``: an emulated world on loopback, three topologies measured in one run.

Client sites on every continent talk to simulated regional backends through WAN relays
(relay.py) whose round trip is the distance model's estimate for the site-region pair
(geodb.distance.est_rtt_ms, fitted to published inter-region P50 RTTs) or, with
--published-rtt, the published AWS inter-region RTTs shipped in geodb/data
(geodb.published_rtt) where both ends are near a listed region; a user's --rtt-table wins over
both. Topologies, all measured at the same time against the same backends:

  (a) origin:  every site straight to one region (--origin; by default eu-central, the field
               report's start);
  (b) dns:     every site straight to its nearest region by distance: no health, no load;
  (c) geogate: an edge gateway per site (at the site: no WAN between client and edge), with
               origin "self", whose upstreams are a regional gateway per region (beside its
               backends), reached through the relays: it routes on the RTT it measures, on
               each region's load (the regional gateway's published /load) and on health
               (its /readyz). --no-regional-gateways: the edges' upstreams are the backends.

Then events, with requests running through each: a region overloaded (its TTFT rises), a
region drained (geogate's admin API; DNS and a single origin have no such thing), a region
failed (its backend killed).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli import world_report as wr
from gateway.cli.procs import (
    PortPicker,
    Started,
    geogate_cmd,
    kill,
    regions_toml,
    spawn,
    spawn_server,
    start_all,
    stop_all,
    uninterrupted,
    wait_json,
)
from gateway.cli.relay import RelaySpec, wait_ports
from gateway.cli.world_backends import KINDS, backend_cmd, tiny_model
from gateway.cli.world_client import MODEL, Site, ask, send_json
from gateway.http.endpoints import LOAD_PATH
from geodb.distance import est_rtt_ms
from geodb.regions import known_region

ADMIN_TOKEN = "world-admin"  # loopback-only gateways that live for one run
PACE_S = 0.1  # during events: each site sends a request at most every 100 ms per topology
LEAD_S = 0.5  # requests run this long before each event (world.json's event_lead_in_s)
GATEWAY_READY_TIMEOUT_S = 60.0  # a dozen processes starting on a shared two-core machine


SITES = (
    Site("London", "GB", "EU", 51.51, -0.13),
    Site("New York", "US", "NA", 40.71, -74.01),
    Site("São Paulo", "BR", "SA", -23.55, -46.63),
    Site("Johannesburg", "ZA", "AF", -26.20, 28.05),
    Site("Mumbai", "IN", "AS", 19.08, 72.88),
    Site("Singapore", "SG", "AS", 1.35, 103.82),
    Site("Tokyo", "JP", "AS", 35.68, 139.77),
    Site("Sydney", "AU", "OC", -33.87, 151.21),
)
DEFAULT_REGIONS = ("eu-central", "us-east", "ap-southeast")


@dataclass
class WorldSpec:
    sites: tuple[Site, ...] = SITES
    regions: tuple[str, ...] = DEFAULT_REGIONS
    origin: str = "eu-central"
    requests: int = 10  # per site and topology in the steady phase
    backend_ttft_ms: float = 40.0
    events: tuple[str, ...] = ("overload", "drain", "fail")
    event_s: float = 4.0  # requests keep running this long after each event
    overload_ttft_ms: float = 600.0
    out: Path = Path("world-results")
    progress: bool = True
    # (site name, region) -> RTT ms from --published-rtt and the user's --rtt-table; pairs
    # it does not list use the distance model. rtt_source says where each listed pair's
    # figure came from (world.json records it, "model" for the rest)
    rtt_table: dict[tuple[str, str], float] = field(default_factory=dict)
    rtt_source: dict[tuple[str, str], str] = field(default_factory=dict)
    backend: str = "sim"  # or "model": the real model server (world_backends)
    model_dir: Path | None = None  # --backend model: None builds the tiny model
    # (c) through a regional gateway per region (edge -> WAN -> regional gateway -> backend),
    # as deployed; False: the edges' upstreams are the backends themselves (one gateway hop)
    regional_gateways: bool = True
    keep_work: bool = False  # keep the run's folder of logs and configs even when it ends well


Table = dict[tuple[str, str], float]


def rtt(site: Site, region: str, table: Table | None = None) -> float:
    if table and (site.name, region) in table:
        return table[(site.name, region)]
    k = known_region(region)
    return est_rtt_ms(site.lat, site.lon, k.latitude, k.longitude)


def nearest(site: Site, regions: tuple[str, ...], table: Table | None = None) -> str:
    return min(regions, key=lambda r: rtt(site, r, table))


def event_regions(spec: WorldSpec) -> dict[str, str]:
    """Which region each event hits: the failure and the drain hit a region that serves some
    sites but is not the origin (topology (a) would otherwise just be down), or the origin when
    it alone serves any (another region can still take (c)'s traffic: geogate world refuses
    events with one region, world_checks); the overload the region nearest to the most sites."""
    served = [nearest(s, spec.regions, spec.rtt_table) for s in spec.sites]
    busiest = [r for r in sorted(spec.regions, key=lambda r: -served.count(r)) if r in served]
    others = [r for r in busiest if r != spec.origin] or busiest
    return {"overload": busiest[0], "drain": others[0], "fail": others[-1]}


def gateway_config(
    region: str,
    port: int,
    ops: int,
    regions: tuple[str, ...],
    upstreams: dict[str, int],
    health_path: str = "/health",
    load_path: str = "",
) -> str:
    """A world gateway: an edge (upstreams: every region's gateway, through its WAN relays,
    probed on /readyz, load read from its /load) or a regional one (upstream: its own
    backend). origin "self": routing on measured RTT."""
    lines = [
        "[gateway]",
        f'region = "{region}"',
        'origin = "self"',
        "",
        "[server]",
        f"port = {port}",
        "access_log = false",
        "",
        "[health]",
        "interval_s = 0.25",
        "timeout_s = 0.5",
        "unhealthy_threshold = 1",
        "",
        "[ops]",
        f"port = {ops}",
        "",
        "[admin]",
        f'tokens = {{ world = "{ADMIN_TOKEN}" }}',
        "",
        regions_toml(*regions),
    ]
    for rid, up in upstreams.items():
        lines += [
            "[[upstreams]]",
            f'id = "{rid}-1"',
            f'region = "{rid}"',
            f'url = "http://127.0.0.1:{up}"',
            f'health_path = "{health_path}"',
            f'load_path = "{load_path}"',
            f'models = ["{MODEL}"]',
            "",
        ]
    return "\n".join(lines)


@dataclass
class World:
    spec: WorldSpec
    work: Path
    sims: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sim_ports: dict[str, int] = field(default_factory=dict)
    relay_ports: dict[tuple[str, str], int] = field(default_factory=dict)  # site -> backend
    edge_relays: dict[tuple[str, str], int] = field(default_factory=dict)  # edge -> regional gw
    gateways: dict[str, tuple[subprocess.Popen[bytes], int, int]] = field(default_factory=dict)
    relay_proc: subprocess.Popen[bytes] | None = None
    ports: PortPicker = field(default_factory=PortPicker)  # never the same port twice a run
    gateway_ups: dict[str, dict[str, int]] = field(default_factory=dict)  # as configured

    def url(self, topology: str, site: Site) -> str:
        if topology == "geogate":
            return f"http://127.0.0.1:{self.gateways[site.name][1]}"
        region = self.spec.origin if topology == "origin" else self._nearest(site)
        return f"http://127.0.0.1:{self.relay_ports[(site.name, region)]}"

    @property
    def edges(self) -> list[tuple[subprocess.Popen[bytes], int, int]]:
        return [self.gateways[s.name] for s in self.spec.sites]

    def _nearest(self, site: Site) -> str:
        return nearest(site, self.spec.regions, self.spec.rtt_table)

    def gateway_log(self, name: str) -> Path:
        return self.work / f"gateway-{name.replace(' ', '_')}.log"

    def _gateway(
        self,
        name: str,
        region: str,
        upstreams: Callable[[], dict[str, int]],
        health: str,
        load: str = "",
        ready: str = "/readyz",
    ) -> Callable[[], Started]:
        def start() -> Started:  # each try on fresh ports, recorded for whoever points here
            port, ops = self.ports(), self.ports()
            self.gateway_ups[name] = ups = upstreams()
            cfg = self.gateway_log(name).with_suffix(".toml")
            text = gateway_config(region, port, ops, self.spec.regions, ups, health, load)
            cfg.write_text(text, encoding="utf-8")
            cmd = geogate_cmd("gateway", "--config", str(cfg))
            st = spawn_server(cmd, self.gateway_log(name), f"http://127.0.0.1:{port}{ready}")
            self.gateways[name] = (st.proc, port, ops)
            return st

        return start

    def _regional(self, rid: str, health: str) -> Callable[[], Started]:
        def ups() -> dict[str, int]:  # its backend's latest port, at each try
            return {rid: self.sim_ports[rid]}

        return self._gateway(f"regional-{rid}", rid, ups, health, ready="/healthz")

    def _moved(self, rid: str) -> bool:
        """Its backend started again elsewhere after its regional gateway was configured."""
        name = f"regional-{rid}"
        return name in self.gateway_ups and self.gateway_ups[name] != {rid: self.sim_ports[rid]}

    def _backend(self, rid: str, model_dir: Path | None) -> Callable[[], Started]:
        s = self.spec

        def start() -> Started:
            self.sim_ports[rid] = port = self.ports()
            cmd = backend_cmd(s.backend, port, rid, MODEL, s.backend_ttft_ms, model_dir)
            url = f"http://127.0.0.1:{port}{KINDS[s.backend].health_path}"
            st = spawn_server(cmd, self.work / f"{rid}.log", url)
            self.sims[rid] = st.proc
            return st

        return start

    def start(self) -> None:
        """Backends with their regional gateways, then the relays, then the edges, each group
        configured with the ports of those before it once they serve: a process that lost its
        port to another between the pick and its bind starts again on a fresh one before
        anyone else points at it (a regional gateway whose backend moved, with it); the
        relays bind ports of the kernel's choosing and say which."""
        s = self.spec
        kind = KINDS[s.backend]
        model_dir = s.model_dir or (tiny_model(self.work) if s.backend == "model" else None)
        first = {rid: self._backend(rid, model_dir) for rid in s.regions}
        if s.regional_gateways:  # beside its backends: no WAN between them. Alive is enough
            # here (ready needs its backend); the edges wait for ready, through the relays
            for rid in s.regions:
                first[f"regional-{rid}"] = self._regional(rid, kind.health_path)
        start_all(first, max(kind.ready_timeout_s, GATEWAY_READY_TIMEOUT_S))
        moved = [f"regional-{r}" for r in s.regions if self._moved(r)]  # its backend did
        stop_all([self.gateways[n][0] for n in moved])
        start_all({n: first[n] for n in moved}, GATEWAY_READY_TIMEOUT_S)
        self._start_relays()
        edges = {}
        for site in s.sites:
            ups = {rid: self.edge_relays[(site.name, rid)] for rid in s.regions}
            if s.regional_gateways:  # what a regional gateway serves on its public port
                health, load = "/readyz", LOAD_PATH
            else:
                health, load = kind.health_path, ""
            region = self._nearest(site)
            edges[site.name] = self._gateway(site.name, region, ups.copy, health, load)
        start_all(edges, GATEWAY_READY_TIMEOUT_S)
        for site in s.sites:
            proc, _, ops = self.gateways[site.name]
            url = f"http://127.0.0.1:{ops}/routing-table"
            rtts = "a measured RTT for every region"
            wait_json(url, _measured(len(s.regions)), rtts, proc, self.gateway_log(site.name))

    def _start_relays(self) -> None:
        """One process for every relay: site -> backend (topologies (a) and (b)) and, with
        regional gateways, edge -> regional gateway; each listens where the kernel put it."""
        s = self.spec
        specs: list[RelaySpec] = []
        keys: list[tuple[dict[tuple[str, str], int], tuple[str, str]]] = []
        for site in s.sites:
            for rid in s.regions:
                ms = rtt(site, rid, s.rtt_table)
                specs.append(RelaySpec(0, self.sim_ports[rid], ms))
                keys.append((self.relay_ports, (site.name, rid)))
                if s.regional_gateways:
                    specs.append(RelaySpec(0, self.gateways[f"regional-{rid}"][1], ms))
                    keys.append((self.edge_relays, (site.name, rid)))
        ports_file = self.work / "relays.ports"
        args = ["--ports-file", str(ports_file), *(x.arg() for x in specs)]
        log = self.work / "relays.log"
        self.relay_proc = spawn([sys.executable, "-m", "gateway.cli.relay", *args], log)
        ports = wait_ports(ports_file, self.relay_proc, log)
        for (table, key), port in zip(keys, ports, strict=True):
            table[key] = port
        if not s.regional_gateways:  # the edge's upstreams are the backends, same WAN
            self.edge_relays.update(self.relay_ports)

    def stop(self) -> None:
        """Every process at once (a gateway may take seconds to drain), with Ctrl-C ignored
        meanwhile: one after another, a second Ctrl-C left the rest running."""
        procs = [g[0] for g in self.gateways.values()] + [*self.sims.values(), self.relay_proc]
        with uninterrupted():
            stop_all([p for p in procs if p is not None])

    # events
    def overload(self, region: str, ttft_ms: float) -> None:
        send_json(f"http://127.0.0.1:{self.sim_ports[region]}/sim/config", {"ttft_ms": ttft_ms})

    def drain(self, region: str, drained: bool) -> None:
        for _, _, ops in self.edges:
            url = f"http://127.0.0.1:{ops}/admin/regions/{region}"
            send_json(url, {"drained": drained}, "PATCH", ADMIN_TOKEN)

    def fail(self, region: str) -> None:
        kill(self.sims[region])


def _measured(regions: int) -> Callable[[Any], bool]:
    """An edge's routing table once it has probed every region through its relay: routing
    then starts on measured RTTs, not on the distance guess."""

    def done(table: Any) -> bool:
        rtts = [u["rtt_ms"] for reg in table["regions"] for u in reg["upstreams"]]
        return len(rtts) >= regions and all(x is not None for x in rtts)

    return done


def combos(world: World) -> Iterator[tuple[str, Site, str, str]]:
    for topo in wr.TOPOLOGIES:
        for site in world.spec.sites:
            region = world.spec.origin if topo == "origin" else world._nearest(site)
            yield topo, site, world.url(topo, site), region


async def steady(world: World, tick: Callable[[], None]) -> list[wr.Sample]:
    out: list[wr.Sample] = []

    async def loop(topo: str, site: Site, url: str, region: str) -> None:
        await ask(url, region, "warm-up", topo, site, 0.0)  # not counted: imports, pools
        for _ in range(world.spec.requests):
            out.append(await ask(url, region, "steady", topo, site, 0.0))
            tick()

    await asyncio.gather(*(loop(*c) for c in combos(world)))
    return out


async def event_phase(
    world: World, event: str, region: str, tick: Callable[[], None]
) -> list[wr.Sample]:
    """Requests run from every site and topology; the event happens after a short lead-in
    and they keep running ``event_s`` after it."""
    out: list[wr.Sample] = []
    t_event = time.perf_counter() + LEAD_S
    end = t_event + world.spec.event_s

    async def loop(topo: str, site: Site, url: str, home: str) -> None:
        due = time.perf_counter()
        while due < end:  # a request every PACE_S from each site: a client that fails
            # fast does not get to count its failures a thousand times
            out.append(await ask(url, home, event, topo, site, t_event))
            tick()
            due += PACE_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    async def trigger() -> None:
        await asyncio.sleep(LEAD_S)
        act = {
            "overload": lambda: world.overload(region, world.spec.overload_ttft_ms),
            "drain": lambda: world.drain(region, True),
            "fail": lambda: world.fail(region),
        }[event]
        await asyncio.get_running_loop().run_in_executor(None, act)

    await asyncio.gather(trigger(), *(loop(*c) for c in combos(world)))
    if event == "overload":
        world.overload(region, world.spec.backend_ttft_ms)
    elif event == "drain":
        world.drain(region, False)
    return out
