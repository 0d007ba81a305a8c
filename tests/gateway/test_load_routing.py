"""Load polling end to end: a backend whose TTFT rises loses its traffic share."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import (
    UpstreamSpec,
    eventually,
    gateway_toml,
    get_json,
    served_by,
    start_gateway,
    start_sim,
)


def test_traffic_moves_away_from_a_slowed_backend(tmp_path: Path) -> None:
    sims = [start_sim(tmp_path, n, "eu-central", ["m"], "--ttft-ms", "5") for n in ("a", "b")]
    ups = [UpstreamSpec(s.name, "eu-central", s.url, ["m"]) for s in sims]
    extra = "[load]\npoll_interval_s = 0.1\n"
    gw = start_gateway(
        tmp_path,
        lambda p: gateway_toml(p, ups, extra=extra).replace(
            "[server]", "[server]\naccess_log = false"
        ),
    )
    try:
        before = served_by(gw.url, 60)
        assert before["a"] > 15 and before["b"] > 15, before  # near-equal: both carry traffic
        httpx.post(f"{sims[1].url}/sim/config", json={"ttft_ms": 150})

        def b_is_slow() -> bool:
            served_by(gw.url, 5)  # traffic goes on, as it would: b's TTFT needs requests
            table = get_json(f"{gw.ops_url}/routing-table")
            ups = {u["id"]: u for r in table["regions"] for u in r["upstreams"]}  # type: ignore[union-attr,index]
            return (ups["b"]["ttft_ms"] or 0) > 50

        eventually(b_is_slow, timeout=15, what="the gateway to see b's TTFT rise")
        after = served_by(gw.url, 60)
        assert after["a"] >= 57, after  # b is out of the tolerance band
    finally:
        gw.stop()
        for s in sims:
            s.proc.kill()
