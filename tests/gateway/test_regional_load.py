"""An edge gateway in front of regional gateways sees the regions' load: a regional gateway
publishes it on its public /load, the edge's load poller reads it there (upstream
``load_path``), and traffic leaves the region whose backend slows down."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from gateway.routing.load import parse_load
from tests.support import (
    Sim,
    UpstreamSpec,
    eventually,
    gateway_toml,
    get_json,
    served_by,
    start_gateway,
    start_sim,
)

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

FAST_POLL = "[load]\npoll_interval_s = 0.1\n"


def _quiet(toml: str) -> str:
    return toml.replace("[server]", "[server]\naccess_log = false")


def _regional_toml(port: int, sim: Sim) -> str:
    return _quiet(
        gateway_toml(port, [UpstreamSpec(sim.name, "eu-central", sim.url, ["m"])], extra=FAST_POLL)
    )


def test_edge_moves_away_from_a_region_whose_backend_slows(tmp_path: Path) -> None:
    sims = [start_sim(tmp_path, n, "eu-central", ["m"], "--ttft-ms", "5") for n in ("a", "b")]
    regional = [
        start_gateway(
            tmp_path,
            partial(_regional_toml, sim=s),
            name=f"regional-{s.name}",
        )
        for s in sims
    ]
    gateway_extra = 'health_path = "/readyz"\nload_path = "/load"'
    ups = [
        UpstreamSpec(f"r{s.name}", "eu-central", g.url, ["m"], gateway_extra)
        for s, g in zip(sims, regional, strict=True)
    ]
    edge = start_gateway(tmp_path, lambda p: _quiet(gateway_toml(p, ups, extra=FAST_POLL)), "edge")
    try:
        before = served_by(edge.url, 60)
        assert before["ra"] > 15 and before["rb"] > 15, before  # near-equal: both carry traffic

        def published_fast() -> bool:
            # A TTFT is published while one was measured in the last load.max_age_s: keep
            # region a serving meanwhile (a loaded machine can stretch the 60 requests above
            # past that age), then read its /load.
            served_by(regional[0].url, 2)
            published = parse_load(httpx.get(f"{regional[0].url}/load").text)
            return published.ttft_ms is not None and published.ttft_ms < 50

        eventually(published_fast, timeout=10, what="region a's published TTFT under 50 ms")

        httpx.post(f"{sims[0].url}/sim/config", json={"ttft_ms": 250})

        def ra_is_slow() -> bool:
            served_by(edge.url, 5)  # traffic goes on: a's TTFT needs requests to show
            table = get_json(f"{edge.ops_url}/routing-table")
            regions = cast(list[dict[str, Any]], table["regions"])
            seen = {u["id"]: u for r in regions for u in r["upstreams"]}
            return (seen["ra"]["ttft_ms"] or 0) > 100

        eventually(ra_is_slow, timeout=15, what="the edge to see region a's TTFT rise")
        after = served_by(edge.url, 40)
        assert after["rb"] >= 38, after  # ra is out of the tolerance band
    finally:
        for g in (edge, *regional):
            g.stop()
        for s in sims:
            s.proc.kill()


def test_load_is_unmeasured_until_a_backend_has_a_ttft(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "a", "eu-central", ["m"])
    gw = start_gateway(
        tmp_path, lambda p: gateway_toml(p, [UpstreamSpec("a", "eu-central", sim.url, ["m"])])
    )
    try:
        r = httpx.get(f"{gw.url}/load")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        # no request yet: no TTFT line (unmeasured, not fast); the routable count is there
        assert "geogate_region_ttft_seconds" not in r.text
        assert 'geogate_region_routable_upstreams{region="eu-central"} 1' in r.text
        assert parse_load(r.text).ttft_ms is None
    finally:
        gw.stop()
        sim.proc.kill()


def test_a_load_path_without_its_slash_is_one_line(tmp_path: Path) -> None:
    from gateway.config_file import load_config
    from gateway.errors import ConfigError

    bad = UpstreamSpec("r", "eu-central", "http://127.0.0.1:9", ["m"], 'load_path = "load"')
    path = tmp_path / "gw.toml"
    path.write_text(gateway_toml(8080, [bad]))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    print(msg)
    assert "load_path 'load' must start with \"/\"" in msg and str(path) in msg
    assert "\n" not in msg


async def test_load_for_one_model_is_over_that_models_upstreams_only() -> None:
    # A region serving a small fast model and a large slow one: without ?model= it advertises
    # its best upstream (the small one's); an edge sending it the large model asks for that.
    import time

    from starlette.applications import Starlette

    from gateway.config import Config
    from gateway.http.endpoints import Endpoints
    from gateway.http.intake import Proxy
    from gateway.routing.load import LoadReading
    from gateway.runtime import build_runtime

    rt = build_runtime(
        Config.model_validate(
            {
                "gateway": {"region": "eu"},
                "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
                "upstreams": [
                    {"id": "s", "region": "eu", "url": "http://127.0.0.1:1", "models": ["small"]},
                    {"id": "b", "region": "eu", "url": "http://127.0.0.1:2", "models": ["big"]},
                ],
            }
        )
    )
    rt.store.record_loads(
        {"s": LoadReading(queue_depth=0.0, ttft_ms=40.0), "b": LoadReading(ttft_ms=4000.0)},
        time.monotonic(),
    )
    app = Starlette(routes=Endpoints(rt).routes(Proxy(rt).recorded))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:

        async def ttft(query: str) -> float | None:
            return parse_load((await c.get(f"/load{query}")).text).ttft_ms

        assert await ttft("") == 40.0
        assert await ttft("?model=big") == 4000.0
        assert await ttft("?model=small") == 40.0
        nobody = (await c.get("/load?model=none")).text
        assert await ttft("?model=none") is None
        assert 'geogate_region_routable_upstreams{region="eu"} 0' in nobody
