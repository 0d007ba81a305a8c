#!/usr/bin/env python3
"""Cases that hold the edge Worker (edge/src) to the Python router and signer, and the
reference points it locates a client by when Cloudflare gives a country but no coordinates.

    scripts/gen_edge_cases.py            rewrite edge/test/route-cases.json, sign-cases.json
                                         and edge/src/points.js
    scripts/gen_edge_cases.py --check    exit 1 when they differ from what the code says now

Each route case is a routing table in ``GET /routing-table``'s shape, a client location and a
model, with the Python router's decision (origin "client"): outcome, reason, residency rule,
the tolerance band, the full order, every candidate's score and every exclusion. Inside the
band the choice is random (weighted), so the Worker's tests compare the band as a set and the
order after it exactly. Each sign case is the fields of a signed client header and the header
``geodb.edge.sign`` makes of them. tests/edge/test_edge_cases.py runs ``--check``'s
comparison, so the files cannot fall behind the Python code; the Worker's tests in workerd
(edge/test/route-cases.test.js) check its router and signer against them. edge/src/points.js is
geodb/data/countries.csv and continents.csv as the Worker imports them (a Worker reads no
files), read as geodb.countries reads them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout as well as from the installed package

from gateway.routing.model import (  # noqa: E402
    Candidate,
    Decision,
    RegionPoint,
    RequestFacts,
    Snapshot,
    UpstreamView,
)
from gateway.routing.policy import Policy, Residency  # noqa: E402
from gateway.routing.router import route  # noqa: E402
from geodb.countries import data_rows  # noqa: E402
from geodb.edge import sign  # noqa: E402
from geodb.location import Location  # noqa: E402
from geodb.regions import known_regions  # noqa: E402

ROUTE_CASES = ROOT / "edge" / "test" / "route-cases.json"
SIGN_CASES = ROOT / "edge" / "test" / "sign-cases.json"
POINTS = ROOT / "edge" / "src" / "points.js"
SEED = 20260101
RANDOM_CASES = 80
TIE_EPS = 1e-6  # scores this close could order differently by a last-bit libm difference

Json = dict[str, Any]

# name: latitude, longitude, country, continent
CITIES: dict[str, tuple[float, float, str, str]] = {
    "London": (51.51, -0.13, "GB", "EU"),
    "Paris": (48.86, 2.35, "FR", "EU"),
    "Berlin": (52.52, 13.40, "DE", "EU"),
    "New York": (40.71, -74.01, "US", "NA"),
    "San Francisco": (37.77, -122.42, "US", "NA"),
    "São Paulo": (-23.55, -46.63, "BR", "SA"),
    "Singapore": (1.29, 103.85, "SG", "AS"),
    "Tokyo": (35.68, 139.69, "JP", "AS"),
    "Mumbai": (19.08, 72.88, "IN", "AS"),
    "Sydney": (-33.87, 151.21, "AU", "OC"),
    "Auckland": (-36.85, 174.76, "NZ", "OC"),
    "Johannesburg": (-26.20, 28.05, "ZA", "AF"),
    "Honolulu": (21.31, -157.86, "US", "NA"),
}


def router_inputs(table: Json) -> tuple[Snapshot, Policy]:
    """A routing-table document as the Python router takes it, with the defaults the Worker
    gives fields left out (edge/src/table.js)."""
    regions = {
        r["id"]: RegionPoint(r["id"], r["latitude"], r["longitude"]) for r in table["regions"]
    }
    ups = tuple(
        UpstreamView(
            id=u["id"],
            region=r["id"],
            models=frozenset(u.get("models", ())),
            weight=u.get("weight", 1.0),
            bias_ms=u.get("bias_ms", 0.0),
            drained=u.get("drained", False),
            healthy=u.get("healthy", True),
            ttft_ms=u.get("ttft_ms"),
            queue_depth=u.get("queue_depth"),
            slots=u.get("slots", 16),
        )
        for r in table["regions"]
        for u in r.get("upstreams", ())
    )
    p = table.get("policy", {})
    policy = Policy(
        origin="client",
        self_region=table["regions"][0]["id"],
        residency=tuple(
            Residency(
                r["name"],
                frozenset(r.get("countries", ())),
                frozenset(r.get("continents", ())),
                frozenset(r["regions"]),
            )
            for r in p.get("residency", ())
        ),
        tolerance_ms=p.get("tolerance_ms", 15.0),
        tolerance_ratio=p.get("tolerance_ratio", 0.15),
        panic_threshold=p.get("panic_threshold", 0.5),
    )
    return Snapshot(ups, regions), policy


def _client(city: str) -> Json:
    lat, lon, country, continent = CITIES[city]
    return {"name": city, "latitude": lat, "longitude": lon, "country": country,
            "continent": continent}  # fmt: skip


def decide(table: Json, client: Json, model: str) -> Decision:
    snap, policy = router_inputs(table)
    loc = Location(client["latitude"], client["longitude"], client["country"], client["continent"])
    return route(RequestFacts(model, loc), snap, policy, random.Random(0))


def expected(d: Decision) -> Json:
    return {
        "outcome": str(d.outcome),
        "reason": str(d.reason),
        "residency": d.residency,
        "band": sorted(d.band),
        "order": [c.upstream.id for c in d.order],
        "scores": {c.upstream.id: c.score_ms for c in d.order},
        "excluded": [
            {"upstream": e.upstream_id, "region": e.region, "reason": e.reason} for e in d.excluded
        ],
    }


def _fragile(d: Decision, table: Json) -> bool:
    """Whether a last-bit difference in a score could change the deterministic part: two
    different scores within TIE_EPS, or a score within TIE_EPS of the band's edge."""
    scores = sorted({c.score_ms for c in d.order})
    if any(b - a < TIE_EPS for a, b in itertools.pairwise(scores)):
        return True
    if not d.order:
        return False
    tier = _tier(d.order[0])
    first = [c.score_ms for c in d.order if _tier(c) == tier]
    best = min(first)
    p = table.get("policy", {})
    limit = best + max(p.get("tolerance_ms", 15.0), p.get("tolerance_ratio", 0.15) * best)
    return any(abs(s - limit) < TIE_EPS for s in first)


def _tier(c: Candidate) -> tuple[bool, bool]:
    return (not c.healthy, c.standby)


# --- hand-written tables ---------------------------------------------------------------------


def region(rid: str, *upstreams: Json) -> Json:
    r = known_regions()[rid]
    return {"id": rid, "latitude": r.latitude, "longitude": r.longitude,
            "url": f"https://{rid}.api.example.com", "upstreams": list(upstreams)}  # fmt: skip


def up(uid: str, **fields: Any) -> Json:
    return {"id": uid, "models": fields.pop("models", ["m"]), **fields}


def table(*regions: Json, **policy: Any) -> Json:
    return {"policy": {"residency": [], **policy}, "regions": list(regions)}


def fleet4(**changes: Json) -> Json:
    """One upstream in each of four regions, each with a fresh TTFT; ``changes`` per id."""
    base = {"eu-central": 60.0, "us-east": 55.0, "ap-southeast": 70.0, "sa-east": 65.0}
    return table(
        *(region(rid, up(f"{rid}-1", **{"ttft_ms": t, **changes.get(rid, {})}))
          for rid, t in base.items())
    )  # fmt: skip


def fleet8() -> Json:
    loads = [(40.0, 0), (90.5, 12), (35.0, 3), (120.0, 30), (60.0, None), (None, None),
             (75.0, 8), (50.0, 1)]  # fmt: skip
    regions = []
    for (rid, _), (ttft, queue) in zip(known_regions().items(), loads, strict=True):
        regions.append(region(rid, up(f"{rid}-1", ttft_ms=ttft, queue_depth=queue, slots=16)))
    return table(*regions)


EU_ONLY = {"name": "eu-only", "continents": ["EU"], "regions": ["eu-central", "eu-west"]}
DE_HOME = {"name": "de-home", "countries": ["DE"], "regions": ["eu-central"]}


def hand_cases() -> list[tuple[str, Json, str, str]]:
    """(name, table, client city, model)."""
    cases: list[tuple[str, Json, str, str]] = []
    for city in CITIES:
        cases.append((f"nearest of four: {city}", fleet4(), city, "m"))
        cases.append((f"eight regions, mixed load: {city}", fleet8(), city, "m"))
    paris = table(region("eu-central", up("fra-1", ttft_ms=50)),
                  region("eu-west", up("dub-1", ttft_ms=50, weight=3)))  # fmt: skip
    cases.append(("two near regions share the band", paris, "Paris", "m"))
    busy = fleet4(**{"eu-central": {"ttft_ms": 900.0, "queue_depth": 32, "slots": 16}})
    cases.append(("a busy near region loses to an idle far one", busy, "London", "m"))
    prior = fleet4(**{"eu-central": {"ttft_ms": None}})
    cases.append(("no fresh TTFT: the model's median is the prior", prior, "London", "m"))
    unknown = table(*(region(r, up(f"{r}-1")) for r in ("eu-central", "us-east", "sa-east")))
    cases.append(("no TTFT anywhere: load 0 for all", unknown, "Johannesburg", "m"))
    cases.append(("bias pushes a region away", fleet4(**{"eu-central": {"bias_ms": 200.0}}),
                  "London", "m"))  # fmt: skip
    cases.append(("negative bias pulls a far region in",
                  fleet4(**{"sa-east": {"bias_ms": -150.0}}), "New York", "m"))  # fmt: skip
    cases.append(("drained is excluded", fleet4(**{"eu-central": {"drained": True}}), "Berlin",
                  "m"))  # fmt: skip
    cases.append(("unhealthy is excluded", fleet4(**{"eu-central": {"healthy": False}}),
                  "London", "m"))  # fmt: skip
    sick3 = fleet4(**{r: {"healthy": False} for r in ("eu-central", "us-east", "sa-east")})
    cases.append(("panic: too few healthy, the unhealthy follow", sick3, "London", "m"))
    sick4 = fleet4(**{r: {"healthy": False} for r in ("eu-central", "us-east", "sa-east",
                                                      "ap-southeast")})  # fmt: skip
    cases.append(("panic: none healthy, routed anyway", sick4, "Singapore", "m"))
    no_panic = {**sick4, "policy": {"residency": [], "panic_threshold": 0.0}}
    cases.append(("no panic threshold: nothing usable", no_panic, "Singapore", "m"))
    standby = fleet4(**{"eu-central": {"weight": 0}})
    cases.append(("standby comes after the others", standby, "London", "m"))
    drained = {"drained": True}
    only_standby = fleet4(**{"eu-central": {"weight": 0}, "us-east": drained,
                             "ap-southeast": drained, "sa-east": drained})  # fmt: skip
    cases.append(("only standby left", only_standby, "London", "m"))
    eu4 = table(*fleet4()["regions"], region("eu-west", up("eu-west-1", ttft_ms=80)),
                residency=[EU_ONLY])  # fmt: skip
    cases.append(("residency: EU clients stay in the EU", eu4, "Paris", "m"))
    cases.append(("residency: others go anywhere", eu4, "New York", "m"))
    fra_sick = fleet4(**{"eu-central": {"healthy": False}})["regions"]
    eu_sick = table(*fra_sick, region("eu-west", up("eu-west-1", ttft_ms=80)), residency=[EU_ONLY])
    cases.append(("residency: the other EU region when one fails", eu_sick, "London", "m"))
    de = table(*fleet4()["regions"], residency=[DE_HOME, EU_ONLY])
    cases.append(("residency by country, first rule wins", de, "Berlin", "m"))
    de_drained = table(*fleet4(**{"eu-central": {"drained": True}})["regions"],
                       residency=[DE_HOME])  # fmt: skip
    cases.append(("residency leaves nothing: no candidate", de_drained, "Berlin", "m"))
    cases.append(("model nobody serves", fleet4(), "London", "other"))
    two = table(region("eu-central", up("fra-m", ttft_ms=40), up("fra-n", models=["n"])),
                region("us-east", up("iad-mn", models=["m", "n"], ttft_ms=30)))  # fmt: skip
    cases.append(("model filter: only those serving n", two, "London", "n"))
    many = table(
        region("eu-central", up("fra-1", ttft_ms=40, weight=2), up("fra-2", ttft_ms=45),
               up("fra-3", ttft_ms=300, queue_depth=40, slots=8), up("fra-4", weight=0)),
        region("eu-west", up("dub-1", ttft_ms=42, bias_ms=5)),
        region("us-east", up("iad-1", ttft_ms=20)),
        tolerance_ms=10.0, tolerance_ratio=0.5,
    )  # fmt: skip
    cases.append(("several upstreams per region, wide ratio band", many, "London", "m"))
    cases.append(("antimeridian: Auckland to Tokyo or Sydney", fleet8(), "Auckland", "m"))
    return cases


# --- random tables ----------------------------------------------------------------------------


def random_table(rng: random.Random) -> Json:
    rids = rng.sample(sorted(known_regions()), rng.randint(2, 6))
    regions = []
    n = 0
    for rid in rids:
        ups = []
        for _ in range(rng.randint(1, 3)):
            n += 1
            ups.append(
                up(
                    f"{rid}-{n}",
                    models=rng.choice([["m"], ["m"], ["m", "n"], ["n"]]),
                    weight=rng.choice([1.0, 1.0, 2.0, 0.5, 5.0, 0.0]),
                    bias_ms=rng.choice([0.0, 0.0, 0.0, 12.5, -20.0, 75.0]),
                    drained=rng.random() < 0.1,
                    healthy=rng.random() < 0.8,
                    ttft_ms=None if rng.random() < 0.3 else round(rng.uniform(5, 400), 1),
                    queue_depth=None if rng.random() < 0.4 else rng.randint(0, 40),
                    slots=rng.choice([8, 16, 32]),
                )
            )
        regions.append(region(rid, *ups))
    policy: Json = {
        "tolerance_ms": rng.choice([15.0, 15.0, 5.0, 40.0]),
        "tolerance_ratio": rng.choice([0.15, 0.15, 0.0, 0.3]),
        "panic_threshold": rng.choice([0.5, 0.5, 0.0, 0.8]),
        "residency": [EU_ONLY] if rng.random() < 0.25 else [],
    }
    return {"policy": policy, "regions": regions}


def random_cases() -> list[tuple[str, Json, Json, str]]:
    rng = random.Random(SEED)
    out: list[tuple[str, Json, Json, str]] = []
    while len(out) < RANDOM_CASES:
        t = random_table(rng)
        client = {
            "name": "random",
            "latitude": round(rng.uniform(-60, 70), 4),
            "longitude": round(rng.uniform(-180, 180), 4),
            "country": rng.choice(["DE", "FR", "US", "JP", "BR", "AU", None]),
            "continent": rng.choice(["EU", "NA", "AS", "SA", "OC", None]),
        }
        model = rng.choice(["m", "m", "m", "n"])
        if _fragile(decide(t, client, model), t):
            continue
        out.append((f"random {len(out) + 1}", t, client, model))
    return out


def route_cases() -> list[Json]:
    cases = [(name, t, _client(city), model) for name, t, city, model in hand_cases()]
    cases += random_cases()
    out = []
    for name, t, client, model in cases:
        d = decide(t, client, model)
        assert not _fragile(d, t), f"case {name!r} is too close to a tie to compare"
        out.append(
            {"name": name, "model": model, "client": client, "table": t, "expect": expected(d)}
        )
    return out


def sign_cases() -> list[Json]:
    secret = "test-secret-0123456789abcdef0123456789abcdef"
    cities = [("London", "LHR"), ("São Paulo", "GRU"), ("Frankfurt am Main", "FRA"),
              ("N'Djamena (Chad)*!", "NDJ")]  # fmt: skip
    out = []
    for i, (city, colo) in enumerate(cities):
        fields = [("kid", "k1"), ("ts", str(1767225600 + i)), ("aud", "eu.api.example.com"),
                  ("ip", "203.0.113.7" if i % 2 else "2001:db8::7"), ("lat", "51.50740"),
                  ("lon", "-0.12780"), ("country", "GB"), ("continent", "EU"), ("city", city),
                  ("colo", colo)]  # fmt: skip
        out.append({"secret": secret, "fields": fields, "header": sign(secret, fields)})
    return out


def points_module() -> str:
    """geodb's country and continent reference points as an ES module for the Worker."""
    countries = {
        r["country"].upper(): [r["continent"].upper(), float(r["latitude"]), float(r["longitude"])]
        for r in data_rows("countries.csv")
    }
    continents = {
        r["continent"].upper(): [float(r["latitude"]), float(r["longitude"])]
        for r in data_rows("continents.csv")
    }

    def entries(d: dict[str, list[Any]]) -> str:
        return "".join(f"  {k}: {json.dumps(v)},\n" for k, v in sorted(d.items()))

    return (
        "// @ts-check\n"
        "// Written by scripts/gen_edge_cases.py from geodb/data/countries.csv and\n"
        "// continents.csv: do not edit (tests/edge/test_edge_cases.py and\n"
        "// edge/test/points.test.js fail when it is out of date). Where a client is when\n"
        "// Cloudflare gives its country but no coordinates, as the gateway's GeoIP places it\n"
        "// (geodb/countries.py): the country's network hub, else its continent's.\n\n"
        "/** @type {Readonly<Record<string, [string, number, number]>>} continent, lat, lon */\n"
        f"export const COUNTRY_POINTS = Object.freeze({{\n{entries(countries)}}});\n\n"
        "/** @type {Readonly<Record<string, [number, number]>>} lat, lon */\n"
        f"export const CONTINENT_POINTS = Object.freeze({{\n{entries(continents)}}});\n"
    )


def render(items: list[Json]) -> str:
    """A JSON list with one item per line: small, and a change shows as the cases it moved."""
    return "[\n" + ",\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n]\n"


def outputs() -> dict[Path, str]:
    return {
        ROUTE_CASES: render(route_cases()),
        SIGN_CASES: render(sign_cases()),
        POINTS: points_module(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run scripts/gen_edge_cases.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
