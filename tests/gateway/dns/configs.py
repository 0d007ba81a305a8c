"""Configs for the GeoDNS tests: three regions, each entered at a loopback address."""

from __future__ import annotations

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
) -> Config:
    return Config.model_validate(
        {
            "gateway": {"region": "eu-central"},
            "regions": list(regions if regions is not None else region_tables()),
            "upstreams": list(upstreams),
            "residency": list(residency),
        }
    )


def toml(urls: Mapping[str, str]) -> str:
    """The same regions as a config file, for the command."""
    lines = ['[gateway]\nregion = "eu-central"\n']
    for r in region_tables(urls):
        lines.append(
            f'[[regions]]\nid = "{r["id"]}"\nlatitude = {r["latitude"]}\n'
            f'longitude = {r["longitude"]}\nurl = "{r["url"]}"\n'
            f'addresses = ["{r["addresses"][0]}"]\n'
        )
    return "\n".join(lines)
