"""bench/latency_ab.py: h2load's per-request log read back, and latency added over direct's."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.ab import check_targets
from bench.latency_ab import added
from bench.overhead_cells import latencies_ms


def test_the_log_gives_each_2xx_request_latency_in_ms(tmp_path: Path) -> None:
    log = tmp_path / "h2load.log"
    # h2load --log-file: start time (µs), status, latency (µs); a failed request's status is -1
    log.write_text(
        "1700000000\t200\t412\n1700000500\t200\t388\n1700001000\t-1\t0\n1700001500\t503\t90\n"
    )
    assert latencies_ms(log) == [0.412, 0.388]
    assert latencies_ms(tmp_path / "none.log") == []  # h2load wrote no log: no latencies


def test_added_latency_is_each_round_less_direct_in_the_same_round() -> None:
    p50s = {"direct": [0.10, 0.20], "nginx": [0.25, 0.33], "geogate": [0.45, 0.50]}
    assert added(p50s) == {"nginx": [0.15, 0.13], "geogate": [0.35, 0.3]}
    assert added({"nginx": [0.25]}) == {}  # nothing to subtract without direct


def test_direct_is_a_target_only_where_the_caller_allows_it() -> None:
    ap = argparse.ArgumentParser(prog="latency_ab")
    assert check_targets(ap, "direct,nginx", direct=True) == ["direct", "nginx"]
    with pytest.raises(SystemExit) as stop:
        check_targets(ap, "direct,nginx")
    assert stop.value.code == 2
