from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import FleetConfigInvalid, NothingToRestore
from gateway.fleet import last_known, memory
from gateway.fleet.memory import MemoryStateStore
from gateway.routing.load import LoadReading
from gateway.routing.model import Outcome, Reason, RequestFacts
from gateway.routing.router import rank
from geodb.location import Location, LocationSource
from tests.support import pool_config

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "load": {"max_age_s": 2.0},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1/", "models": ["m"]}],
    }
)


def view(s: MemoryStateStore, now: float) -> tuple[float | None, float | None]:
    u = s.snapshot(now).upstreams[0]
    return u.ttft_ms, u.queue_depth


def test_ttft_is_the_mean_between_polls_and_stale_samples_are_ignored() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(queue_depth=1, ttft_sum_s=1.0, ttft_count=10), now=0.0)
    assert view(s, 0.0) == (None, 1)  # one cumulative reading says nothing about "recent"
    s.record_load("a", LoadReading(queue_depth=4, ttft_sum_s=3.0, ttft_count=20), now=1.0)
    assert view(s, 1.0) == (200.0, 4)  # (3.0 - 1.0) s / 10 requests
    assert view(s, 2.9) == (200.0, 4)  # 1.9 s old: still used
    assert view(s, 3.0) == (None, None)  # load.max_age_s old: ignored, not trusted


def test_config_replacement_keeps_health_and_url_is_normalised() -> None:
    s = MemoryStateStore(CFG)
    s.record_probe("a", False, None, "refused")
    s.replace_config(CFG)
    u = s.snapshot(0.0).upstreams[0]
    assert not u.healthy and u.url == "http://127.0.0.1:1"


def test_an_upstream_whose_url_changed_starts_over() -> None:
    # Another server: it kept the old one's health, RTT, ejection and load, and took traffic
    # before any probe of the new URL; back at the fixed URL it stayed ejected.
    s = MemoryStateStore(CFG)
    s.record_probe("a", False, None, "refused")
    s.record_load("a", LoadReading(queue_depth=3), now=0.0)
    doc = CFG.model_dump(mode="json")
    doc["upstreams"][0]["url"] = "http://user:rotated@127.0.0.1:1"  # the same server
    s.replace_config(Config.model_validate(doc))
    assert s.health("a").last_probe_error == "refused" and s.load("a") is not None
    doc["upstreams"][0]["url"] = "http://127.0.0.1:2"
    s.replace_config(Config.model_validate(doc))
    assert s.health("a").await_probe and s.health("a").last_probe_error is None
    assert s.load("a") is None
    assert not s.snapshot(0.0).upstreams[0].healthy  # not before a probe of the new URL
    assert s.joined.is_set()  # the prober probes it at once
    s.record_probe("a", True, 5.0, None)
    assert s.snapshot(0.0).upstreams[0].healthy


def test_an_unconfirmed_ttft_expires_so_a_shunned_backend_is_retried() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(ttft_sum_s=0.0, ttft_count=0), now=0.0)
    s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=1.0)  # 200 ms
    for t in (1.5, 2.0, 2.5):  # polls go on, but no request confirms the TTFT
        s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=t)
    assert view(s, 2.9) == (200.0, None)
    s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=3.5)
    assert view(s, 3.5)[0] is None  # 2.5 s unconfirmed: back to unknown, so tried again


def test_ejection_never_takes_more_than_the_capped_share() -> None:
    ups = [
        {"id": f"u{i}", "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": ["m"]}
        for i in range(3)
    ]
    cfg = Config.model_validate(
        {
            **CFG.model_dump(),
            "upstreams": ups,
            "outlier": {"consecutive_failures": 2, "max_ejected_share": 0.1},
        }
    )
    s = MemoryStateStore(cfg)
    for uid in ("u0", "u1"):
        for _ in range(2):
            s.record_result(uid, False, now=1.0)
    # 10 % of 3 rounds down to 0, but one may always go (Envoy's rule): u0 only.
    assert [u.healthy for u in s.snapshot(1.0).upstreams] == [False, True, True]


def test_the_cap_is_each_models_pool_not_the_whole_gateway() -> None:
    """One model's ejected upstream kept another model's failing one in rotation, and
    drained upstreams, serving nothing, counted in the pool and raised its cap."""

    served = [("a0", "m"), ("a1", "m"), ("w0", "w"), ("w1", "w")]
    served += [(f"d{i}", "m") for i in range(6)]  # drained: ten upstreams in all
    ups = [
        {"id": uid, "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": [model]}
        | ({"drained": True} if uid.startswith("d") else {})
        for i, (uid, model) in enumerate(served)
    ]
    cfg = Config.model_validate(
        {
            **CFG.model_dump(),
            "upstreams": ups,
            "outlier": {"consecutive_failures": 2, "max_ejected_share": 0.5},
        }
    )
    s = MemoryStateStore(cfg)

    def fail(uid: str) -> bool:
        return s.record_result(uid, False, now=1.0) | s.record_result(uid, False, now=1.0)

    assert fail("a0")  # m's pool: a0, a1 (the drained ones serve nothing): one of two
    assert not fail("a1")  # 50 % of m's two: a1 stays in (ten counted, it went out)
    assert fail("w0")  # w's pool has none out (the gateway's one counted took it)
    healthy = {u.id: u.healthy for u in s.snapshot(1.0).upstreams}
    assert [healthy[u] for u in ("a0", "a1", "w0", "w1")] == [False, True, False, True]
    # Without drained ones: four upstreams at 25 %, one out in all under a gateway-wide cap,
    # which kept w's failing upstream in because one of m's was out.
    cfg = Config.model_validate(
        {
            **cfg.model_dump(),
            "upstreams": ups[:4],
            "outlier": {"consecutive_failures": 2, "max_ejected_share": 0.25},
        }
    )
    s = MemoryStateStore(cfg)
    assert fail("a0") and fail("w0")


def test_a_reconfirmed_estimate_restarts_from_the_new_measurement() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(ttft_sum_s=0.0, ttft_count=0), now=0.0)
    s.record_load("a", LoadReading(ttft_sum_s=0.05, ttft_count=10), now=1.0)  # 5 ms
    s.record_load("a", LoadReading(ttft_sum_s=0.05, ttft_count=10), now=3.5)  # expired
    s.record_load("a", LoadReading(ttft_sum_s=1.55, ttft_count=20), now=4.0)  # 150 ms
    assert view(s, 4.0)[0] == 150.0  # not 0.3 * 150 + 0.7 * 5


def test_a_polling_round_is_applied_at_once() -> None:
    ups = [
        {"id": f"u{i}", "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": ["m"]}
        for i in range(3)
    ]
    s = MemoryStateStore(Config.model_validate({**CFG.model_dump(), "upstreams": ups}))
    before = s.snapshot(0.0)
    s.record_loads(
        {f"u{i}": LoadReading(queue_depth=float(i), kv_usage=0.5) for i in range(3)}
        | {"gone": LoadReading(queue_depth=9.0)},
        now=0.0,
    )  # unknown: ignored
    after = s.snapshot(0.0)
    assert after is not before and after is s.snapshot(0.0)  # one rebuild for the round
    assert [u.queue_depth for u in after.upstreams] == [0.0, 1.0, 2.0]
    load = s.load("u1")
    assert load is not None and load.kv_usage == 0.5 and s.load("gone") is None


# --- members that join at run time ---------------------------------------------------------

# A DNS-discovered pool ("pool@<addr>:<port>" members) serving "m".
POOL = pool_config()
ONE, TWO, THREE = (("10.0.0.1", 8000), ("10.0.0.2", 8000), ("10.0.0.3", 8000))
LONDON = Location(51.51, -0.13, "GB", "EU", "London", 50, LocationSource.GEOIP)


def healthy(s: MemoryStateStore, now: float = 0.0) -> dict[str, bool]:
    return {u.id: u.healthy for u in s.snapshot(now).upstreams}


def test_an_upstream_of_the_start_up_config_routes_before_its_first_probe() -> None:
    # The first look probes it before serving; until then (or if that probe is slow) it is
    # assumed up, as before.
    assert healthy(MemoryStateStore(CFG)) == {"a": True}


def test_a_member_that_joins_is_not_routable_until_a_probe_answers() -> None:
    s = MemoryStateStore(POOL)
    s.set_members("pool", (ONE,))
    s.record_probe("pool@10.0.0.1:8000", True, 2.0, None)
    assert healthy(s) == {"pool@10.0.0.1:8000": True}
    s.set_members("pool", (ONE, TWO))  # published before its server finished loading
    assert healthy(s) == {"pool@10.0.0.1:8000": True, "pool@10.0.0.2:8000": False}
    s.record_probe("pool@10.0.0.2:8000", False, None, "connection refused")
    assert healthy(s)["pool@10.0.0.2:8000"] is False
    for _ in range(2):  # after a failed probe, health.healthy_threshold good ones
        s.record_probe("pool@10.0.0.2:8000", True, 2.0, None)
    assert healthy(s) == {"pool@10.0.0.1:8000": True, "pool@10.0.0.2:8000": True}
    # A member that leaves and comes back (a restarted pod) waits for a probe again.
    s.set_members("pool", (ONE,))
    s.set_members("pool", (ONE, TWO))
    assert healthy(s)["pool@10.0.0.2:8000"] is False
    s.record_probe("pool@10.0.0.2:8000", True, 2.0, None)  # the first answer decides
    assert healthy(s)["pool@10.0.0.2:8000"] is True


def test_unprobed_members_are_only_a_failover_while_a_probed_one_serves() -> None:
    # Two joiners outnumber the one probed member: the panic threshold (50 %) lets them into
    # the order, but behind it, never in the band the choice is made from.
    s = MemoryStateStore(POOL)
    s.set_members("pool", (ONE,))
    s.record_probe("pool@10.0.0.1:8000", True, 2.0, None)
    s.set_members("pool", (ONE, TWO, THREE))
    d = rank(RequestFacts("m", LONDON), s.snapshot(0.0), s.policy)
    assert d.band == ("pool@10.0.0.1:8000",) and d.reason is Reason.LOWEST_SCORE


def test_a_pool_of_only_unprobed_members_is_routed_in_panic_not_refused() -> None:
    # A name that resolved to nothing, then to fresh members: none is known to be down, so
    # rather than a certain 503 the router's panic rule uses them, until the first probe
    # (watch.prober probes a joiner at once) says which.
    s = MemoryStateStore(POOL)
    s.set_members("pool", (ONE, TWO))
    d = rank(RequestFacts("m", LONDON), s.snapshot(0.0), s.policy)
    assert d.outcome is Outcome.ROUTED and d.reason is Reason.PANIC


def test_members_weigh_their_srv_shares_and_the_store_names_them() -> None:
    s = MemoryStateStore(POOL)
    s.set_members("pool", (ONE, TWO), {ONE: 1.5, TWO: 0.5})
    assert {u.id: u.weight for u in s.upstreams()} == {
        "pool@10.0.0.1:8000": 1.5,
        "pool@10.0.0.2:8000": 0.5,
    }
    assert s.member_shares() == {"pool@10.0.0.1:8000": 1.5, "pool@10.0.0.2:8000": 0.5}
    assert not s.set_members("pool", (ONE, TWO), {ONE: 1.5, TWO: 0.5})  # no change
    assert s.set_members("pool", (ONE, TWO))  # equal again: a change
    assert s.member_shares() == {}


# --- drains: an upstream's own and its region's --------------------------------------------

TWO_REGIONS = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "regions": [
            {"id": "eu", "latitude": 50, "longitude": 8},
            {"id": "us", "latitude": 40, "longitude": -74},
        ],
        "upstreams": [
            {"id": uid, "region": rid, "url": "http://127.0.0.1:1", "models": ["m"]}
            for uid, rid in (("fra-1", "eu"), ("fra-2", "eu"), ("nyc-1", "us"))
        ],
    }
)


def chosen_region(s: MemoryStateStore) -> str:
    c = rank(RequestFacts("m", LONDON), s.snapshot(0.0), s.policy).chosen
    assert c is not None
    return c.upstream.region


async def test_undraining_a_region_leaves_an_upstream_drained_on_its_own_out() -> None:
    s = MemoryStateStore(TWO_REGIONS)
    await s.update_upstream("fra-1", {"drained": True}, "alice")  # maintenance
    await s.update_region("eu", {"drained": True}, "bob")
    assert chosen_region(s) == "us"  # the region's drain moves its traffic away
    await s.update_region("eu", {"drained": False}, "bob")
    drained = {u.id: u.drained for u in s.snapshot(0.0).upstreams}
    assert drained == {"fra-1": True, "fra-2": False, "nyc-1": False}
    assert chosen_region(s) == "eu"  # and its undrain brings it back, to fra-2 alone
    # An upstream's undrain inside a drained region: the region's drain still holds it.
    await s.update_region("eu", {"drained": True}, "bob")
    await s.update_upstream("fra-1", {"drained": False}, "alice")
    assert [u.id for u in s.snapshot(0.0).upstreams if u.drained] == ["fra-1", "fra-2"]
    # ...which, undrained on its own, the region's undrain brings back with the rest.
    await s.update_region("eu", {"drained": False}, "bob")
    assert not any(u.drained for u in s.snapshot(0.0).upstreams)
    assert s.config.drained_regions == {}


async def test_a_region_drained_the_old_way_is_refused_an_undrain_and_stays_out() -> None:
    s = MemoryStateStore(TWO_REGIONS)
    for uid in ("fra-1", "fra-2"):  # as a region drain of the release before wrote it
        await s.update_upstream(uid, {"drained": True}, "alice")
    version = s.version
    with pytest.raises(FleetConfigInvalid, match="region eu is not drained as a region"):
        await s.update_region("eu", {"drained": False}, "bob")
    assert s.version == version and chosen_region(s) == "us"


def test_a_region_listed_in_drained_regions_is_drained_whatever_its_flags_say() -> None:
    """A file may list a region without setting its upstreams' flags (config_doc sets both):
    the region's drain still holds them."""
    data = TWO_REGIONS.model_dump(mode="json")
    s = MemoryStateStore(Config.model_validate({**data, "drained_regions": {"eu": []}}))
    assert [u.id for u in s.snapshot(0.0).upstreams if u.drained] == ["fra-1", "fra-2"]
    assert chosen_region(s) == "us"


def test_a_dns_members_url_is_split_as_text_before_urlsplit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CPythons with CVE-2025-0938's fix refuse text before a bracket in urlsplit: a member's
    # "name|[fd00::5]:443" made each config replacement raise. As such a CPython would:
    real = urllib.parse.urlsplit

    def strict(url: str) -> Any:
        if "|" in url:
            raise ValueError("Invalid IPv6 URL")
        return real(url)

    monkeypatch.setattr("gateway.fleet.memory.urlsplit", strict)
    server = memory._server("https://name|[fd00::5]:443/v1")
    assert server == ("https", "name", None, "/v1", ("fd00::5", 443))
    assert memory._server("https://name|[fd00::6]:443/v1") != server  # another member


async def test_a_worker_started_in_place_of_another_keeps_its_operator_changes() -> None:
    """granian restarts its workers on SIGHUP, and a worker that dies is replaced: the
    in-memory store's drains and weights were lost with the worker, unsaid. The parent keeps
    them (fleet.last_known) while the file's routing is the one they were made on."""
    with last_known.kept(True, False):
        first = MemoryStateStore(CFG)
        await first.update_upstream("a", {"drained": True}, "alice")
        await first.update_upstream("a", {"weight": 3}, "alice")
        after = MemoryStateStore(CFG)
        assert after.version == 3
        [a] = after.config.upstreams
        assert (a.drained, a.weight) == (True, 3.0)
        more = (*CFG.upstreams, CFG.upstreams[0].model_copy(update={"id": "b"}))
        fresh = MemoryStateStore(CFG.model_copy(update={"upstreams": more}))  # the file changed
        assert fresh.version == 1 and not fresh.config.upstreams[0].drained
    assert MemoryStateStore(CFG).version == 1  # a gateway started anew starts from its file


async def test_a_restore_without_redis_is_nothing_to_restore() -> None:
    with pytest.raises(NothingToRestore, match="keeps its state in memory"):
        await MemoryStateStore(CFG).restore("alice")
