"""Client location end to end: GeoIP by source address, forged and trusted X-Forwarded-For,
hot reload of the database (and refusal of a corrupt one), residency."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geodb.build import build_from_rows
from tests.support import (
    Gateway,
    UpstreamSpec,
    eventually,
    gateway_toml,
    start_gateway,
    start_sim,
)

LONDON, SINGAPORE, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.9"
ROWS = [
    ("london", [f"{LONDON}/32", "GB", "EU", "51.51", "-0.13", "London"]),
    ("singapore", [f"{SINGAPORE}/32", "SG", "AS", "1.35", "103.82", "Singapore"]),
]


def region_for(gw: Gateway, source: str, model: str = "m", **headers: str) -> str:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport) as c:
        r = c.post(
            f"{gw.url}/v1/chat/completions", headers=headers, json={"model": model, "messages": []}
        )
    assert r.status_code == 200, r.text
    return r.headers["geogate-route"].split(";")[0].removeprefix("region=")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("geo")
    db = tmp / "cities.mmdb"
    build_from_rows(ROWS, db)
    eu = start_sim(tmp, "eu", "eu-central", ["m", "pinned"])
    ap = start_sim(tmp, "ap", "ap-southeast", ["m", "pinned", "ap-only"])
    ups = [
        UpstreamSpec("eu-1", "eu-central", eu.url, ["m"]),
        UpstreamSpec("ap-1", "ap-southeast", ap.url, ["m"]),
        # For "pinned", eu-central scores 5 s worse: only residency can put London there.
        UpstreamSpec("eu-pinned", "eu-central", eu.url, ["pinned"], "bias_ms = 5000"),
        UpstreamSpec("ap-pinned", "ap-southeast", ap.url, ["pinned"]),
        UpstreamSpec("ap-only", "ap-southeast", ap.url, ["ap-only"]),
    ]
    extra = (
        f'[geoip]\ndatabase = "{db}"\nreload_interval_s = 0.1\n\n'
        f'[[residency]]\nname = "eu-in-eu"\ncontinents = ["EU"]\nregions = ["eu-central"]\n'
    )

    def toml(port: int) -> str:
        return gateway_toml(port, ups, extra=extra).replace(
            'origin = "client"', f'origin = "client"\ntrusted_proxies = ["{PROXY}/32"]'
        )

    gw = start_gateway(tmp, toml)
    try:
        yield gw, db
    finally:
        gw.stop()
        eu.proc.kill()
        ap.proc.kill()


def test_source_address_picks_the_nearest_region(setup: tuple[Gateway, Path]) -> None:
    gw, _ = setup
    assert region_for(gw, LONDON) == "eu-central"
    assert region_for(gw, SINGAPORE) == "ap-southeast"


def test_forged_forwarded_for_from_untrusted_peer_changes_nothing(
    setup: tuple[Gateway, Path],
) -> None:
    gw, _ = setup
    assert region_for(gw, LONDON, **{"X-Forwarded-For": SINGAPORE}) == "eu-central"


def test_trusted_proxy_chain_is_walked_from_the_right(setup: tuple[Gateway, Path]) -> None:
    gw, _ = setup
    assert region_for(gw, PROXY, **{"X-Forwarded-For": SINGAPORE}) == "ap-southeast"
    # A client-forged prefix sits left of the hop our proxy appended: never reached.
    xff = f"{LONDON}, {SINGAPORE}"
    assert region_for(gw, PROXY, **{"X-Forwarded-For": xff}) == "ap-southeast"


def test_residency_overrides_a_better_score(setup: tuple[Gateway, Path]) -> None:
    gw, _ = setup
    assert region_for(gw, LONDON, model="pinned") == "eu-central"
    assert region_for(gw, SINGAPORE, model="pinned") == "ap-southeast"


def test_residency_that_leaves_no_upstream_refuses_for_good(setup: tuple[Gateway, Path]) -> None:
    # "ap-only" is served in ap-southeast alone, where eu-in-eu never sends London: a 503
    # with Retry-After had the OpenAI SDKs wait 5 s twice for the same refusal; a 403 they
    # do not retry.
    gw, _ = setup
    with httpx.Client(transport=httpx.HTTPTransport(local_address=LONDON)) as c:
        body = {"model": "ap-only", "messages": []}
        r = c.post(f"{gw.url}/v1/chat/completions", json=body)
    assert r.status_code == 403 and "retry-after" not in r.headers, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_available_in_region", "model")
    assert "residency rule eu-in-eu keeps them in its regions" in error["message"]
    assert region_for(gw, SINGAPORE, model="ap-only") == "ap-southeast"


def test_hot_reload_and_corrupt_file_refused(setup: tuple[Gateway, Path]) -> None:
    gw, db = setup
    moved = db.with_name("moved.mmdb")
    build_from_rows([("london", [f"{LONDON}/32", "SG", "AS", "1.35", "103.82", "Moved"])], moved)
    os.replace(moved, db)  # how operators (and geoipupdate) replace a file: atomically
    eventually(
        lambda: region_for(gw, LONDON) == "ap-southeast",
        timeout=10,
        what="the replaced database to serve",
    )

    good = db.read_bytes()
    db.write_bytes(good[: len(good) // 2])  # truncated in place, as a failed copy leaves it
    eventually(
        lambda: (
            f"refused GeoIP reload, still serving the previous file: GeoIP "
            f"database {db}" in gw.log_text()
        ),
        timeout=10,
        what="the refusal log line",
    )
    assert region_for(gw, LONDON) == "ap-southeast"  # the previous database still serves
    lines = [x for x in gw.log_text().splitlines() if "refused GeoIP reload" in x]
    assert len(lines) == 1  # one line, not one per poll
    metrics = httpx.get(f"{gw.ops_url}/metrics").text
    assert 'geogate_geoip_reloads_total{result="ok"} 1.0' in metrics
    assert 'geogate_geoip_reloads_total{result="refused"} 1.0' in metrics
