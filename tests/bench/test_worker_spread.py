"""bench/worker_spread.py: how far a split of connections is from an even one."""

from __future__ import annotations

import pytest

from bench.worker_spread import summary


def test_the_busiest_workers_share_over_an_even_one() -> None:
    s = summary([[32, 32], [28, 36]], 64)
    assert s["peak_over_even"] == [1.0, 36 / 32]
    assert s["mean_peak_over_even"] == pytest.approx((1.0 + 36 / 32) / 2)
    assert summary([[0, 0, 64]], 64)["peak_over_even"] == [3.0]  # all on one of three
