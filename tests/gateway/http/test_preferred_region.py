"""A regional gateway (origin "self") tells a client that entered the wrong region where to
enter instead (geogate-preferred-region) and counts it; it still serves the request here."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from geodb.build import build_from_rows
from tests.support import Gateway, UpstreamSpec, gateway_toml, start_gateway, start_sim

LONDON, SINGAPORE = "127.0.0.2", "127.0.0.3"  # source addresses the test's GeoIP places
ROWS = [
    ("london", [f"{LONDON}/32", "GB", "EU", "51.51", "-0.13", "London"]),
    ("singapore", [f"{SINGAPORE}/32", "SG", "AS", "1.35", "103.82", "Singapore"]),
]
HINT = "geogate-preferred-region"


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("steer")
    db = tmp / "cities.mmdb"
    build_from_rows(ROWS, db)
    eu = start_sim(tmp, "eu", "eu-central", ["m"])
    ap = start_sim(tmp, "ap", "ap-southeast", ["m"])
    ups = [
        UpstreamSpec("eu-1", "eu-central", eu.url, ["m"]),
        UpstreamSpec("ap-1", "ap-southeast", ap.url, ["m"]),
    ]
    extra = f'[geoip]\ndatabase = "{db}"\n'
    gw = start_gateway(
        tmp, lambda port: gateway_toml(port, ups, region="eu-central", origin="self", extra=extra)
    )
    try:
        yield gw
    finally:
        gw.stop()
        eu.proc.kill()
        ap.proc.kill()


def post_from(gw: Gateway, source: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as c:
        r = c.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert r.status_code == 200, r.text
    return r


def test_a_client_in_the_wrong_region_is_served_and_told_where_to_enter(
    regional: Gateway,
) -> None:
    r = post_from(regional, SINGAPORE)
    assert r.headers[HINT] == "ap-southeast"
    assert HINT not in post_from(regional, LONDON).headers
    metrics = httpx.get(f"{regional.ops_url}/metrics").text
    assert 'geogate_missteered_requests_total{region="ap-southeast"} 1.0' in metrics
