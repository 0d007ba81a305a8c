"""DNS discovery end to end: a real DNS server on loopback, records changed under traffic."""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dnslib import QTYPE, RR, SOA, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.support import Gateway, Sim, eventually, get_json, served_by, start_gateway, start_sim

SRV_NAME = "_llm._tcp.pool.test"
BODY = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


class Zone(BaseResolver):  # type: ignore[misc]
    """A and SRV records the test can change while the server runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing = False  # answer SERVFAIL, as a broken DNS server does
        self.a: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[str, int]]] = {}
        self.priority: dict[int, int] = {}  # an SRV target's priority, by its port (else 0)
        self.weight: dict[int, int] = {}  # and its weight (else 0)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        q = request.q
        name = str(q.qname).rstrip(".")
        with self.lock:
            if self.failing:
                raise RuntimeError("simulated DNS failure")  # dnslib answers SERVFAIL
            if q.qtype == QTYPE.A:
                for addr in self.a.get(name, []):
                    reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(addr), ttl=1))
            elif q.qtype == QTYPE.SRV:
                for target, port in self.srv.get(name, []):
                    reply.add_answer(
                        RR(
                            q.qname,
                            QTYPE.SRV,
                            ttl=1,
                            rdata=SRV(
                                self.priority.get(port, 0),
                                self.weight.get(port, 0),
                                port,
                                target + ".",
                            ),
                        )
                    )
        if not reply.rr:
            # As authoritative servers answer "no records" (RFC 2308): an SOA whose minimum
            # TTL bounds how long resolvers (c-ares included) cache the negative answer.
            soa = SOA("ns.test.", "admin.test.", (1, 1, 1, 1, 1))
            reply.add_auth(RR("test.", QTYPE.SOA, ttl=1, rdata=soa))
        return reply


@pytest.fixture
def dns() -> Iterator[tuple[Zone, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    zone = Zone()
    server = DNSServer(zone, port=port, address="127.0.0.1", logger=DNSLogger("-request,-reply"))
    server.start_thread()
    logging.getLogger("dnslib").setLevel(logging.WARNING)
    yield zone, port
    server.stop()


def gateway_with(tmp: Path, dns_port: int, upstream_toml: str) -> Gateway:
    def toml(port: int) -> str:
        return (
            f'[gateway]\nregion = "eu"\n[server]\nport = {port}\naccess_log = false\n'
            f"[health]\ninterval_s = 0.2\ntimeout_s = 0.5\nunhealthy_threshold = 1\n"
            f'[discovery]\ninterval_s = 0.2\nnameservers = ["127.0.0.1:{dns_port}"]\n'
            f'[[regions]]\nid = "eu"\nlatitude = 50\nlongitude = 8\n{upstream_toml}'
        )

    return start_gateway(tmp, toml)


def members(gw: Gateway, healthy_only: bool = False) -> set[str]:
    """The pool's members; ``healthy_only``: those routed (one that joined while running is
    routed once its first health probe answers)."""
    table: Any = get_json(f"{gw.ops_url}/routing-table")
    ups = [u for r in table["regions"] for u in r["upstreams"]]
    return {u["id"] for u in ups if u["healthy"] or not healthy_only}


def srv_gateway(tmp: Path, dns_port: int, host: str = "pool.test", more: str = "") -> Gateway:
    """A gateway whose one upstream, "pool", is SRV_NAME's members (``more``: its other keys)."""
    return gateway_with(
        tmp,
        dns_port,
        f'[[upstreams]]\nid = "pool"\nregion = "eu"\nurl = "http://{host}"\n'
        f'models = ["m"]\ndiscovery = "srv"\nsrv = "{SRV_NAME}"\n{more}',
    )


def two_targets(tmp: Path, zone: Zone, prefix: str, hosts: tuple[str, str]) -> list[Sim]:
    """Two sims, each the one SRV target ``hosts[i]`` (both names at 127.0.0.1) of SRV_NAME."""
    sims = [start_sim(tmp, f"{prefix}{i}", "eu", ["m"]) for i in range(2)]
    with zone.lock:
        zone.a.update({host: ["127.0.0.1"] for host in hosts})
        zone.srv[SRV_NAME] = [(host, sim.port) for host, sim in zip(hosts, sims, strict=True)]
    return sims


def test_srv_members_join_and_leave(tmp_path: Path, dns: tuple[Zone, int]) -> None:
    zone, dns_port = dns
    sims: list[Sim] = [
        start_sim(tmp_path, f"s{i}", "eu", ["m"], "--tokens-per-s", "20") for i in range(2)
    ]
    with zone.lock:
        zone.a["hosts.pool.test"] = ["127.0.0.1"]
        zone.srv[SRV_NAME] = [("hosts.pool.test", sims[0].port)]
    gw = srv_gateway(tmp_path, dns_port, "hosts.pool.test")
    one, two = (f"pool@127.0.0.1:{s.port}" for s in sims)
    try:
        assert members(gw) == {one}
        assert served_by(gw.url, 5) == Counter({one: 5})
        with zone.lock:
            zone.srv[SRV_NAME].append(("hosts.pool.test", sims[1].port))
        eventually(lambda: members(gw, True) == {one, two}, what="the new member to join")
        assert set(served_by(gw.url, 40)) == {one, two}
        # A stream in flight to the member that leaves must finish.
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            timeout=10,
            json={**BODY, "max_tokens": 60, "stream": True},  # 3 s at 20 tokens/s
        ) as r:
            lines = r.iter_lines()
            first = next(lines)
            route = r.headers["geogate-route"]
            leaving = one if one in route else two
            with zone.lock:
                zone.srv[SRV_NAME] = [
                    ("hosts.pool.test", s.port) for s in sims if f":{s.port}" not in leaving
                ]
            eventually(lambda: leaving not in members(gw), what="the member to leave")
            # The member left while this stream was still running on it.
            leaving_sim = next(s for s in sims if f":{s.port}" in leaving)
            assert leaving_sim.stats()["active"] == 1
            rest = list(lines)
        assert first and "data: [DONE]" in rest
        staying = ({one, two} - {leaving}).pop()
        assert served_by(gw.url, 10) == Counter({staying: 10})
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()


def test_a_records_and_a_dns_outage_keeps_the_pool(tmp_path: Path, dns: tuple[Zone, int]) -> None:
    zone, dns_port = dns
    sim = start_sim(tmp_path, "a", "eu", ["m"])
    with zone.lock:
        zone.a["pool.test"] = ["127.0.0.1"]
    gw = gateway_with(
        tmp_path,
        dns_port,
        (
            f'[[upstreams]]\nid = "pool"\nregion = "eu"\nurl = "http://pool.test:{sim.port}"\n'
            'models = ["m"]\ndiscovery = "dns"\n'
        ),
    )
    try:
        member = f"pool@127.0.0.1:{sim.port}"
        assert members(gw) == {member}
        assert served_by(gw.url, 3)
        with zone.lock:
            zone.failing = True  # an outage is not an answer: the pool stays
        eventually(
            lambda: "cannot resolve upstream pool" in gw.log_text(),
            what="the failed resolution to be logged",
        )
        assert members(gw) == {member} and served_by(gw.url, 3) == Counter({member: 3})
        with zone.lock:
            zone.failing = False
            zone.a.clear()  # the name now has no records: an answer, believed
        eventually(lambda: members(gw) == set(), what="the emptied pool")
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_upstream"
        assert "now: pool resolves to no addresses (DNS" in r.json()["error"]["message"]
        with zone.lock:
            zone.a["pool.test"] = ["127.0.0.1"]
        eventually(lambda: len(members(gw)) == 1, what="the member to come back")
        assert "resolves to: none" in gw.log_text()
    finally:
        gw.stop()
        sim.proc.kill()


def test_a_higher_srv_priority_is_a_backup_used_only_when_the_lower_has_no_address(
    tmp_path: Path, dns: tuple[Zone, int]
) -> None:
    zone, dns_port = dns
    sims = two_targets(tmp_path, zone, "p", ("primary.pool.test", "backup.pool.test"))
    with zone.lock:
        zone.priority = {sims[0].port: 10, sims[1].port: 20}
    gw = srv_gateway(tmp_path, dns_port)
    primary, backup = (f"pool@127.0.0.1:{s.port}" for s in sims)
    try:
        assert members(gw) == {primary}  # the backup takes no share of the load
        with zone.lock:
            del zone.a["primary.pool.test"]  # the primary's host is gone from DNS
        eventually(lambda: members(gw, True) == {backup}, what="the backup to take over")
        assert served_by(gw.url, 3) == Counter({backup: 3})
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()


def test_srv_weights_set_each_members_share_and_weight_0_a_very_small_one(
    tmp_path: Path, dns: tuple[Zone, int]
) -> None:
    zone, dns_port = dns
    sims = two_targets(tmp_path, zone, "w", ("heavy.pool.test", "light.pool.test"))
    with zone.lock:
        zone.weight = {sims[0].port: 30, sims[1].port: 10}
    gw = srv_gateway(tmp_path, dns_port, more="weight = 2\n")
    heavy, light = (f"pool@127.0.0.1:{s.port}" for s in sims)

    def weights() -> dict[str, float]:
        table: Any = get_json(f"{gw.ops_url}/routing-table")
        return {u["id"]: u["weight"] for r in table["regions"] for u in r["upstreams"]}

    try:
        # 3:1 of the upstream's weight of 2 a member, 4 in all as with equal shares
        eventually(lambda: weights() == {heavy: 3.0, light: 1.0}, what="the SRV weights")
        with zone.lock:
            zone.weight = {sims[0].port: 10, sims[1].port: 0}
        # Weight 0 beside a weighted record: RFC 2782's "very small chance", a thousandth.
        eventually(lambda: weights() == {heavy: 4.0, light: 0.002}, what="weight 0")
        eventually(lambda: members(gw, True) == {heavy, light}, what="both healthy")
        assert served_by(gw.url, 6)[heavy] >= 5  # one in ~2,000 requests goes to light
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
