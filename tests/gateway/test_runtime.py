"""One locate-and-route for the proxy, /explain and geodb lookup: the trusted-proxy rule and
the location source both apply."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.runtime import build_runtime
from geodb.edge import sign

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu", "trusted_proxies": ["127.0.0.9/32"]},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
    }
)


def test_a_trusted_peer_hands_over_the_client_from_forwarded_for() -> None:
    rt = build_runtime(CFG)
    # Walked from the right: the balancer's own hop is trusted, the one before it is not.
    routed = rt.locate_and_route("127.0.0.9", ["203.0.113.7, 127.0.0.9"], "m", 0.0)
    assert routed.client == ipaddress.ip_address("203.0.113.7")
    assert routed.client_text == "203.0.113.7"  # what the upstream and the access line get
    assert routed.peer_trusted
    assert routed.decision.chosen is not None and routed.decision.chosen.upstream.id == "a"


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    rt = build_runtime(CFG)
    routed = rt.locate_and_route("127.0.0.2", ["203.0.113.7"], "m", 0.0)
    assert routed.client == ipaddress.ip_address("127.0.0.2")
    assert routed.client_text == "127.0.0.2"
    assert not routed.peer_trusted
    assert str(routed.location.source) == "default"


def test_the_store_owns_the_routing_config() -> None:
    rt = build_runtime(CFG)
    changed = CFG.model_copy(update={"residency": ()})
    rt.store.replace_config(changed)
    assert rt.config is changed and rt.store.policy.residency == ()


def test_a_signed_edge_header_locates_the_client_else_the_peer_does() -> None:
    secret = "e" * 32
    cfg = CFG.model_copy(update={"edge": CFG.edge.model_copy(update={"keys": {"k1": secret}})})
    rt = build_runtime(cfg)
    signed = {"kid": "k1", "ts": str(int(time.time())), "aud": "gw.example",
              "ip": "198.51.100.4", "lat": "1.35", "lon": "103.82", "country": "SG"}  # fmt: skip
    value = sign(secret, list(signed.items()))
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0, edge_header=value, host="gw.example")
    assert routed.client == ipaddress.ip_address("198.51.100.4")
    assert (str(routed.location.source), routed.location.country) == ("edge", "SG")
    # Another host: the header is ignored, and the peer (or a trusted proxy's chain) decides.
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0, edge_header=value, host="other")
    assert routed.client == ipaddress.ip_address("127.0.0.2")
    assert str(routed.location.source) == "default"
    counted = {
        s.labels["result"]: s.value
        for m in rt.metrics.registry.collect()
        if m.name == "geogate_edge_location"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counted == {"ok": 1.0, "wrong_audience": 1.0}


def test_rankings_are_reused_within_a_snapshot_and_follow_a_change() -> None:
    rt = build_runtime(CFG)
    first = rt.locate_and_route("127.0.0.2", [], "m", 0.0).decision
    # Another client, same snapshot: the same ranking, not a fresh one.
    assert rt.locate_and_route("127.0.0.3", [], "m", 0.0).decision is first
    # A drain (a new snapshot) is seen by the very next request.
    drained = CFG.upstreams[0].model_copy(update={"drained": True})
    rt.store.replace_config(CFG.model_copy(update={"upstreams": [drained]}))
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0)
    assert routed.decision.chosen is None and str(routed.decision.outcome) == "no_candidate"


def test_the_current_task_comes_from_the_workers_loop_and_from_any_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = build_runtime(CFG)
    other = asyncio.new_event_loop()  # not running: its current task is none
    asked: list[object] = []
    real = asyncio.current_task

    def spy(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[object] | None:
        asked.append(loop)  # None: the running loop looked up (a getpid() in CPython 3.11)
        return real(loop)

    async def main() -> None:
        me, loop, here = asyncio.current_task(), asyncio.get_running_loop(), threading.get_ident()
        monkeypatch.setattr(asyncio, "current_task", spy)
        for rt.loop, rt.loop_thread, lookups in (
            (None, 0, [None]),  # none set yet
            (loop, here, [loop]),  # the worker's loop, on its thread: given, no lookup
            (loop, here + 1, [None]),  # set from another thread
            (other, here, [other, None]),  # a loop not running here: its task is none
        ):
            asked.clear()
            assert rt.current_task() is me
            assert asked == lookups, (rt.loop, lookups)

    try:
        asyncio.run(main())
    finally:
        other.close()


def test_another_threads_loop_in_the_middle_of_a_step_is_not_taken_for_this_one() -> None:
    rt = build_runtime(CFG)
    other = asyncio.new_event_loop()
    in_step, release = threading.Event(), threading.Event()

    async def busy() -> None:
        in_step.set()
        release.wait(5)  # holds the other thread's loop inside this task's step

    thread = threading.Thread(target=other.run_until_complete, args=(busy(),))
    thread.start()

    async def main() -> None:
        me = asyncio.current_task()
        rt.loop, rt.loop_thread = other, thread.ident or 0  # as a lifespan on that thread sets
        theirs = asyncio.current_task(other)
        assert theirs is not None and theirs is not me  # what an unguarded lookup would return
        assert rt.current_task() is me

    try:
        assert in_step.wait(5)
        asyncio.run(main())
    finally:
        release.set()
        thread.join(5)
        other.close()


def test_a_default_country_without_continent_gets_the_countrys() -> None:
    from gateway.runtime import default_location

    d = CFG.geoip.default.model_copy(update={"country": "JP"})
    cfg = CFG.model_copy(update={"geoip": CFG.geoip.model_copy(update={"default": d})})
    loc = default_location(cfg)
    assert (loc.country, loc.continent) == ("JP", "AS")


def test_a_signed_location_without_a_country_takes_geoips_so_residency_applies() -> None:
    # A signed header with coordinates but no country or continent confined its client to
    # nothing: a London client was served in us-east with the EU region drained.
    secret = "e" * 32
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [
                {"id": "eu", "latitude": 50, "longitude": 8},
                {"id": "us", "latitude": 39, "longitude": -77},
            ],
            "upstreams": [
                {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
                {"id": "b", "region": "us", "url": "http://127.0.0.1:2", "models": ["m"]},
            ],
            "edge": {"keys": {"k1": secret}},
            "geoip": {"default": {"country": "GB", "continent": "EU"}},
            "residency": [{"name": "eu-only", "continents": ["EU"], "regions": ["eu"]}],
        }
    )
    rt = build_runtime(cfg)
    signed = {"kid": "k1", "ts": str(int(time.time())), "aud": "gw.example",
              "ip": "198.51.100.4", "lat": "51.5", "lon": "-0.13"}  # fmt: skip
    value = sign(secret, list(signed.items()))
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0, edge_header=value, host="gw.example")
    loc = routed.location
    assert (str(loc.source), loc.latitude, loc.country, loc.continent) == ("edge", 51.5, "GB", "EU")
    assert routed.decision.residency == "eu-only"
    assert routed.decision.chosen is not None and routed.decision.chosen.upstream.id == "a"


@pytest.mark.parametrize(
    ("signed", "country", "continent", "rule"),
    [
        ({"country": "T1", "continent": "T1"}, "GB", "EU", "gb-in-eu-1"),  # Tor: GeoIP's both
        # A continent alone: no GeoIP hit here, only the default's GB, which is no evidence.
        ({"continent": "EU"}, None, "EU", "eu-only"),
        ({"country": "XX", "continent": "EU"}, None, "EU", "eu-only"),
        ({"country": "XX"}, "GB", "EU", "gb-in-eu-1"),
        ({"country": "FR"}, "FR", "EU", "eu-only"),  # the country's own continent, not GeoIP's
        ({"country": "XK"}, "XK", "EU", "eu-only"),  # no row: NO_ROW_CONTINENTS's
    ],
)
def test_a_signed_location_missing_a_field_takes_it_from_geoip(
    signed: dict[str, str], country: str | None, continent: str, rule: str
) -> None:
    # Filled field by field: a continent-only header skipped the country's rule, and a code
    # that is no country (Cloudflare's T1, XX) matched none at all.
    secret = "e" * 32
    cfg = Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [
                {"id": "eu", "latitude": 50, "longitude": 8},
                {"id": "eu-1", "latitude": 51, "longitude": 0},
                {"id": "us", "latitude": 39, "longitude": -77},
            ],
            "upstreams": [
                {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]},
                {"id": "c", "region": "eu-1", "url": "http://127.0.0.1:3", "models": ["m"]},
                {"id": "b", "region": "us", "url": "http://127.0.0.1:2", "models": ["m"]},
            ],
            "edge": {"keys": {"k1": secret}},
            "geoip": {"default": {"country": "GB", "continent": "EU"}},
            "residency": [
                {"name": "gb-in-eu-1", "countries": ["GB"], "regions": ["eu-1"]},
                {"name": "eu-only", "continents": ["EU"], "regions": ["eu", "eu-1"]},
            ],
        }
    )
    rt = build_runtime(cfg)
    fields = {"kid": "k1", "ts": str(int(time.time())), "aud": "gw.example",
              "ip": "198.51.100.4", "lat": "40.7", "lon": "-74.0", **signed}  # fmt: skip
    value = sign(secret, list(fields.items()))
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0, edge_header=value, host="gw.example")
    assert (routed.location.country, routed.location.continent) == (country, continent)
    assert routed.decision.residency == rule


@pytest.mark.parametrize(("continent", "country"), [("EU", "FR"), ("NA", None)])
def test_a_continent_alone_takes_geoips_country_only_on_that_continent(
    tmp_path: Path, continent: str, country: str | None
) -> None:
    # GeoIP (a built file) places 192.0.2.10 in France: a header signed "EU" gets FR; one
    # signed "NA" keeps no country, rather than one GeoIP puts on another continent.
    from geodb.build import build_from_rows

    db = tmp_path / "city.mmdb"
    build_from_rows([("r", ["192.0.2.0/24", "FR", "EU", "48.86", "2.35", "Paris"])], db)
    secret = "e" * 32
    cfg = CFG.model_copy(
        update={
            "edge": CFG.edge.model_copy(update={"keys": {"k1": secret}}),
            "geoip": CFG.geoip.model_copy(update={"database": db}),
        }
    )
    rt = build_runtime(cfg)
    fields = {"kid": "k1", "ts": str(int(time.time())), "aud": "gw.example",
              "ip": "192.0.2.10", "lat": "40.7", "lon": "-74", "continent": continent}  # fmt: skip
    value = sign(secret, list(fields.items()))
    routed = rt.locate_and_route("127.0.0.2", [], "m", 0.0, edge_header=value, host="gw.example")
    assert (routed.location.country, routed.location.continent) == (country, continent)
