"""A regional gateway believes the edge's signed client header (geodb.edge) and nothing
else: signed, in time and for this host, the client is the edge's (source=edge, its IP to the
backend); unsigned, tampered, expired, unknown-key or signed-for-another-host headers are
ignored (the peer and GeoIP decide) and counted in geogate_edge_location{result}. Also: the
routing table shows what the edge Worker routes on (region URLs, slots, the policy)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from geodb.edge import sign
from tests.support import (
    CHAT_BODY,
    Gateway,
    Sim,
    UpstreamSpec,
    gateway_toml,
    start_gateway,
    start_sim,
)

SECRET = "regional-edge-secret-0123456789abcdef"
OLD_SECRET = "rotated-out-secret-0123456789abcdef00"
OPS = {"Authorization": "Bearer ops-token"}
EXTRA = f"""
[ops]
token = "ops-token"

[edge]
keys = {{ k2 = "{SECRET}", k1 = "{OLD_SECRET}" }}

[[residency]]
name = "eu-only"
continents = ["EU"]
regions = ["eu-central"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("edge-location")
    sim = start_sim(tmp, "fra", "eu-central", ["m"])
    ups = [UpstreamSpec("fra", "eu-central", sim.url, ["m"], extra="slots = 8")]
    try:
        gw = start_gateway(tmp, lambda p: gateway_toml(p, ups, origin="self", extra=EXTRA))
        try:
            yield gw, sim
        finally:
            gw.stop()
    finally:
        sim.proc.kill()


def header(gw: Gateway, *, secret: str = SECRET, kid: str = "k2", **changes: str) -> str:
    fields = {
        "kid": kid,
        "ts": str(int(time.time())),
        "aud": f"127.0.0.1:{gw.port}",
        "ip": "81.2.69.142",
        "lat": "51.5072",
        "lon": "-0.1276",
        "country": "GB",
        "continent": "EU",
        "city": "London",
        "colo": "LHR",
    }
    fields.update(changes)
    return sign(secret, list(fields.items()))


def seen_by_backend(gw: Gateway, sim: Sim, value: str | None) -> dict[str, str]:
    """Send a chat request with the header; the headers the backend got."""
    headers = {} if value is None else {"geogate-client": value}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, headers=headers)
    assert r.status_code == 200, r.text
    got = sim.stats()["last_headers"]
    assert isinstance(got, dict)
    return {k.lower(): v for k, v in got.items()}


def counter(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.ops_url}/metrics", headers=OPS).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}_total\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_signed_header_is_the_client_source_edge(setup: tuple[Gateway, Sim]) -> None:
    gw, sim = setup
    ok = counter(gw, "geogate_edge_location", result="ok")
    got = seen_by_backend(gw, sim, header(gw))
    assert got["x-real-ip"] == "81.2.69.142"  # the edge's client, not the peer
    assert "geogate-client" not in got  # for the gateway only
    assert counter(gw, "geogate_edge_location", result="ok") == ok + 1
    assert counter(gw, "geogate_client_requests", country="GB", source="edge") >= 1
    # The key being rotated out still verifies while it is listed.
    assert seen_by_backend(gw, sim, header(gw, secret=OLD_SECRET, kid="k1"))["x-real-ip"] == (
        "81.2.69.142"
    )


@pytest.mark.parametrize(
    ("change", "result"),
    [
        ({"secret": "someone-else-s-secret-0123456789abcdef"}, "bad_signature"),
        ({"kid": "k9"}, "unknown_key"),
        ({"ts": str(int(time.time()) - 3600)}, "expired"),
        ({"aud": "127.0.0.1:1"}, "wrong_audience"),
    ],
)
def test_a_header_not_to_be_believed_is_ignored_and_counted(
    setup: tuple[Gateway, Sim], change: dict[str, str], result: str
) -> None:
    gw, sim = setup
    before = counter(gw, "geogate_edge_location", result=result)
    got = seen_by_backend(gw, sim, header(gw, **change))
    assert got["x-real-ip"] == "127.0.0.1"  # the peer, as if no header had come
    assert counter(gw, "geogate_edge_location", result=result) == before + 1


def test_tampered_and_unsigned_headers_are_ignored(setup: tuple[Gateway, Sim]) -> None:
    gw, sim = setup
    tampered = header(gw).replace("ip=81.2.69.142", "ip=81.2.69.143")
    unsigned = header(gw).rsplit(";sig=", 1)[0]
    bad = counter(gw, "geogate_edge_location", result="bad_signature")
    malformed = counter(gw, "geogate_edge_location", result="malformed")
    assert seen_by_backend(gw, sim, tampered)["x-real-ip"] == "127.0.0.1"
    assert seen_by_backend(gw, sim, unsigned)["x-real-ip"] == "127.0.0.1"
    assert counter(gw, "geogate_edge_location", result="bad_signature") == bad + 1
    assert counter(gw, "geogate_edge_location", result="malformed") == malformed + 1


def test_explain_locates_a_signed_client_too(setup: tuple[Gateway, Sim]) -> None:
    gw, _ = setup
    value = header(gw, aud=f"127.0.0.1:{gw.ops_port}", lat="1.3521", lon="103.8198",
                   country="SG", continent="AS", city="Singapore")  # fmt: skip
    doc = httpx.get(
        f"{gw.ops_url}/explain", params={"model": "m"}, headers={**OPS, "geogate-client": value}
    ).json()
    assert doc["ip"] == "81.2.69.142"
    assert doc["location"]["source"] == "edge"
    assert (doc["location"]["country"], doc["location"]["city"]) == ("SG", "Singapore")


def test_the_routing_table_has_what_the_edge_routes_on(setup: tuple[Gateway, Sim]) -> None:
    gw, _ = setup
    table = httpx.get(f"{gw.ops_url}/routing-table", headers=OPS).json()
    urls = {r["id"]: r["url"] for r in table["regions"]}
    assert set(urls) == {"eu-central", "us-east", "ap-southeast", "sa-east"}
    [fra] = [u for r in table["regions"] for u in r["upstreams"]]
    assert (fra["id"], fra["slots"], fra["models"]) == ("fra", 8, ["m"])
    assert table["policy"] == {
        "tolerance_ms": 15.0,
        "tolerance_ratio": 0.15,
        "panic_threshold": 0.5,
        "residency": [
            {"name": "eu-only", "countries": [], "continents": ["EU"], "regions": ["eu-central"]}
        ],
    }


def test_keys_without_audiences_are_warned_of_at_start(setup: tuple[Gateway, Sim]) -> None:
    """With no edge.audiences the audience is the Host the client sends: a header captured for
    another gateway sharing the key passes here with that Host. Said once, at start."""
    gw, _ = setup
    assert gw.log_text().count("edge.keys without edge.audiences") == 1


# The warning comes at most once a minute per gateway: no other test of this module's shared
# gateway may send geogate-hops from an untrusted peer first.
def test_another_gateways_request_from_an_untrusted_peer_is_warned_of(
    setup: tuple[Gateway, Sim],
) -> None:
    # An edge gateway (origin client) in front of this one sends geogate-hops and no signed
    # client: with residency rules and the edge not in trusted_proxies, the client was
    # located as the edge gateway and its rule silently did not apply.
    gw, _ = setup
    warning = "which is not in gateway.trusted_proxies"
    hop = {"geogate-hops": "1", "x-forwarded-for": "203.0.113.9"}  # as an edge gateway sends
    signed = {**hop, "geogate-client": header(gw)}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, headers=signed).is_success
    assert warning not in gw.log_text()  # located by the signed header: nothing lost
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # at most once a minute
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport) as c:
            r = c.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, headers=hop)
        assert r.status_code == 200
    lines = [ln for ln in gw.log_text().splitlines() if warning in ln]
    assert len(lines) == 1 and "came from 127.0.0.1" in lines[0], lines
