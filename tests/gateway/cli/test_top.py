"""``ctl top``'s frame from a routing table and two metric scrapes: rates, percentiles, health
with the fleet's votes. (A real gateway's frame: tests/gateway/cli/test_ctl.py.)"""

from __future__ import annotations

import math
from typing import Any

import pytest
from rich.console import Console

from gateway.cli.top import (
    TTFB_NOTE,
    Sample,
    frame,
    parse_metrics,
    partial,
    quantile,
    restarted,
    ttfb_ms,
    votes_cell,
    weight_cell,
)

METRICS = """\
# TYPE geogate_upstream_attempts counter
geogate_upstream_attempts_total{{upstream="a",outcome="ok"}} {ok}
geogate_upstream_attempts_total{{upstream="a",outcome="status_503"}} {failed}
# TYPE geogate_requests counter
geogate_requests_total{{code="200",region="eu"}} {ok}
geogate_requests_total{{code="502",region="eu"}} {failed}
# TYPE geogate_time_to_first_byte_seconds histogram
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="true",le="0.1"}} {fast}
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="true",le="1.0"}} {ok}
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="true",le="+Inf"}} {ok}
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="false",le="0.1"}} 0
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="false",le="1.0"}} 0
geogate_time_to_first_byte_seconds_bucket{{region="eu",stream="false",le="+Inf"}} {slow}
"""
# stream="false": whole answers, whose first byte is their end; the TTFT column leaves them out
# (were they counted, every sample's p50 would be past the last bucket).


def sample(t: float, ok: int, failed: int, fast: int) -> Sample:
    text = METRICS.format(ok=ok, failed=failed, fast=fast, slow=10 * ok)
    return Sample(t, parse_metrics(text))


TABLE: dict[str, Any] = {
    "self_region": "eu",
    "version": 7,
    "shared_state": "stale",
    "regions": [
        {
            "id": "eu",
            "name": "Frankfurt",
            "upstreams": [
                {
                    "id": "a",
                    "healthy": True,
                    "drained": False,
                    "weight": 2,
                    "rtt_ms": 1.234,
                    "queue_depth": 3,
                    "ttft_ms": 120.0,
                    "in_flight": 4,
                    "seen_by": {"gw0": True, "gw1": False},
                    "ejected_s": 0,
                    "times_ejected": 1,
                },
                {
                    "id": "a-ejected",
                    "healthy": False,
                    "ejected_s": 25.4,
                    "ejection_cause": "5 consecutive failed requests",
                    "seen_by": {},
                },
            ],
        },
        {"id": "empty", "name": "", "upstreams": []},
    ],
}


def render(*args: Any) -> str:
    console = Console(width=200, record=True)
    console.print(frame(*args))
    return console.export_text()


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = {0.1: 50.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == 0.1
    assert quantile(0.75, buckets) == pytest.approx(0.55)  # halfway into (0.1, 1.0]
    assert quantile(0.99, {0.1: 0.0, math.inf: 10.0}) == 0.1  # beyond the last finite bound
    assert quantile(0.5, {}) is None and quantile(0.5, {math.inf: 0.0}) is None


def test_frame_shows_rates_percentiles_health_and_votes() -> None:
    old, new = sample(100.0, 10, 0, 10), sample(102.0, 30, 4, 20)
    text = render("http://127.0.0.1:9180", TABLE, old, new)
    assert "config v7" in text and "shared state stale" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # a: 24 attempts in 2 s, 4 of them failed; 1/2 gateways see it up, gw1 down.
    assert rows["a"][:9] == ["a", "up", "1/2", "up", "(down:", "gw1)", "2", "1.2", "3"]
    assert rows["a"][-4:] == ["4", "12.0", "2.0", "1"]
    assert "ejected 25s: 5 consecutive failed requests" in " ".join(rows["a-ejected"])
    # eu: 20 requests/s answered 200, 2/s 502; TTFB: 10 of 20 under 100 ms.
    assert rows["eu"][:4] == ["eu", "Frankfurt", "1/2", "routable"]
    assert "p50 100 p99" in " ".join(rows["eu"]) and rows["eu"][-2:] == ["12.0", "2.0"]
    assert rows["empty"][:2] == ["empty", "0/0"]
    assert " ".join(rows["note:"]) == TTFB_NOTE  # why a region's p50 may be blank


def test_in_flight_is_every_workers_from_the_merged_metrics() -> None:
    # The routing table's count is the answering worker's: 13 of 24 streams with two workers.
    merged = (
        METRICS.format(ok=30, failed=4, fast=20, slow=300)
        + "# TYPE geogate_upstream_in_flight gauge\n"
        + 'geogate_upstream_in_flight{upstream="a",region="eu",worker="0"} 11\n'
        + 'geogate_upstream_in_flight{upstream="a",region="eu",worker="1"} 13\n'
    )
    old, new = sample(100.0, 10, 0, 10), Sample(102.0, parse_metrics(merged))
    rows = {
        line.split()[0]: line.split()
        for line in render("u", TABLE, old, new).splitlines()
        if line.strip()
    }
    assert rows["a"][-4] == "24"  # not the table's 4
    assert rows["eu"][-3] == "24"  # the region's: its upstreams' sum


def test_without_a_window_rates_are_unknown_not_zero() -> None:
    new = sample(100.0, 10, 0, 10)
    rows = {
        line.split()[0]: line.split()
        for line in render("u", TABLE, None, new).splitlines()
        if line.strip()
    }
    assert rows["a"][-3:-1] == ["?", "?"]
    assert ttfb_ms(None, new, "eu") == (None, None)
    assert ttfb_ms(sample(101.0, 30, 0, 20), new, "eu") == (None, None)  # counters went back


def test_an_error_counter_that_went_back_is_unknown_not_zero() -> None:
    """Another worker's scrape: the 502s counted fewer than before. The region's requests/s
    still add up (9/s), its errors/s cannot be known: "?", as the module promises."""
    old, new = sample(100.0, 10, 4, 10), sample(102.0, 30, 2, 20)
    rows = {
        line.split()[0]: line.split()
        for line in render("u", TABLE, old, new).splitlines()
        if line.strip()
    }
    assert rows["eu"][-2:] == ["9.0", "?"]


def test_votes() -> None:
    assert votes_cell({}) == "local"
    assert votes_cell({"gw0": True, "gw1": True}) == "2/2 up"


def test_a_bias_shows_beside_the_weight() -> None:
    # An upstream biased away took no traffic with nothing on its row to say why.
    assert weight_cell({"weight": 1, "bias_ms": 200.0}) == "1 +200ms"
    assert weight_cell({"weight": 2, "bias_ms": -50}) == "2 -50ms"
    assert weight_cell({"weight": 0.5, "bias_ms": 0}) == "0.5"


UNROUTED_METRICS = """\
# TYPE geogate_requests counter
geogate_requests_total{{code="200",region="eu"}} {ok}
geogate_requests_total{{code="503",region="-"}} {refused}
"""


def test_requests_refused_before_routing_get_a_row() -> None:
    # A drained region's clients, refused with no candidate, showed nowhere: 0 req/s, 0 err/s.
    def at(t: float, ok: int, refused: int) -> Sample:
        return Sample(t, parse_metrics(UNROUTED_METRICS.format(ok=ok, refused=refused)))

    text = render("u", {"regions": []}, at(100.0, 10, 0), at(102.0, 10, 8))
    (row,) = [line.split() for line in text.splitlines() if line.startswith("before routing")]
    assert row[-2:] == ["4.0", "4.0"]
    quiet = render("u", {"regions": []}, at(100.0, 10, 0), at(102.0, 30, 0))
    assert "before routing" in quiet  # the series exists: shown, at 0.0
    none = Sample(
        102.0,
        parse_metrics(
            '# TYPE geogate_requests counter\ngeogate_requests_total{code="200",region="eu"} 3\n'
        ),
    )
    assert "before routing" not in render("u", {"regions": []}, None, none)


def test_a_restarted_gateways_counters_start_a_new_window() -> None:
    assert restarted(sample(100.0, 30, 4, 20), sample(101.0, 2, 0, 1))
    assert not restarted(sample(100.0, 10, 4, 10), sample(102.0, 30, 2, 20))


def test_a_worker_missing_from_one_scrape_is_no_restart() -> None:
    # Two workers' series (the merged /metrics); one missed a scrape (over its time to
    # answer): the sum went down, nothing restarted. Taken for a restart, that scrape became
    # the base and the next one read many times the real rate.
    def at(t: float, w1: int, w2: int | None) -> Sample:
        lines = ["# TYPE geogate_requests counter"]
        lines.append(f'geogate_requests_total{{code="200",region="eu",worker="1"}} {w1}')
        if w2 is not None:
            lines.append(f'geogate_requests_total{{code="200",region="eu",worker="2"}} {w2}')
        return Sample(t, parse_metrics("\n".join(lines) + "\n"))

    full, short = at(100.0, 500, 600), at(101.0, 510, None)
    assert not restarted(full, short)
    assert not restarted(short, at(102.0, 520, 620))
    assert restarted(full, at(103.0, 530, 3))  # worker 2 restarted: its count went back


def test_a_scrape_that_says_a_worker_is_missing_is_partial() -> None:
    # Kept in the window, it became a rate's base later: the missing worker's whole count
    # read as new requests. The merged /metrics says how many workers answered.
    def at(scraped: int) -> Sample:
        text = (
            "# TYPE geogate_workers gauge\ngeogate_workers 2\n"
            f"# TYPE geogate_workers_scraped gauge\ngeogate_workers_scraped {scraped}\n"
        )
        return Sample(0.0, parse_metrics(text))

    assert partial(at(1)) and not partial(at(2))
    assert not partial(sample(100.0, 10, 0, 10))  # one worker: no such gauges


def test_frame_says_the_gateway_refuses_the_fleets_document() -> None:
    # /routing-table's fleet_config_refused: top said "shared state fresh" while /readyz said
    # degraded and every change was refused.
    old, new = sample(100.0, 10, 0, 10), sample(102.0, 30, 4, 20)
    table = {**TABLE, "shared_state": "fresh", "fleet_config_refused": "version 9: weight -5"}
    text = render("http://127.0.0.1:9180", table, old, new)
    assert "shared state fresh, fleet config refused (ctl show says why)" in text
    assert "shared state fresh  " in render(
        "http://127.0.0.1:9180", {**table, "fleet_config_refused": None}, old, new
    )
