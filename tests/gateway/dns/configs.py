"""Configs for the GeoDNS tests: three regions, each entered at a loopback address."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config import Config
from geodb.regions import known_region

# Region -> the address its entry answers on (any 127.x works on Linux's loopback).
ADDRESSES = {"eu-central": "127.0.0.11", "us-east": "127.0.0.12", "ap-southeast": "127.0.0.13"}


def region_tables(urls: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    out = []
    for rid, addr in ADDRESSES.items():
        r = known_region(rid)
        url = (urls or {}).get(rid, f"http://{addr}:8080")
        out.append(
            {
                "id": rid,
                "latitude": r.latitude,
                "longitude": r.longitude,
                "url": url,
                "addresses": [addr],
            }
        )
    return out


def dns_config(
    *,
    regions: Sequence[dict[str, Any]] | None = None,
    upstreams: Sequence[dict[str, Any]] = (),
    residency: Sequence[dict[str, Any]] = (),
    drained_regions: Mapping[str, Sequence[str]] | None = None,
) -> Config:
    return Config.model_validate(
        {
            "gateway": {"region": "eu-central"},
            "regions": list(regions if regions is not None else region_tables()),
            "upstreams": list(upstreams),
            "residency": list(residency),
            "drained_regions": dict(drained_regions or {}),
        }
    )


def toml(
    urls: Mapping[str, str],
    addresses: Mapping[str, Sequence[str]] | None = None,
    residency: Sequence[dict[str, Any]] = (),
) -> str:
    """The same regions as a config file, for the command; ``addresses`` replaces a region's."""
    lines = ['[gateway]\nregion = "eu-central"\n']
    for r in region_tables(urls):
        addrs = json.dumps(list((addresses or {}).get(r["id"], r["addresses"])))
        lines.append(
            f'[[regions]]\nid = "{r["id"]}"\nlatitude = {r["latitude"]}\n'
            f'longitude = {r["longitude"]}\nurl = "{r["url"]}"\n'
            f"addresses = {addrs}\n"
        )
    for rule in residency:
        # JSON's strings and arrays of strings are TOML's too.
        lines.append(
            "[[residency]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in rule.items())
        )
    return "\n".join(lines)


# Each region's IPv6 entry address (documentation range: DNS only answers them; each region's
# /readyz stays on its IPv4 loopback address).
V6 = {"eu-central": "2001:db8::11", "us-east": "2001:db8::12", "ap-southeast": "2001:db8::13"}


def stacks(*ipv4_only: str) -> dict[str, list[str]]:
    """Every region dual-stack but ``ipv4_only``."""
    return {r: [a] + ([] if r in ipv4_only else [V6[r]]) for r, a in ADDRESSES.items()}


# EU clients' data stays in Frankfurt.
EU_RESIDENCY = [{"name": "eu", "continents": ["EU"], "regions": ["eu-central"]}]
