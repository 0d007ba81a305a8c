"""Members that join at run time (DNS discovery, a fleet config change): they take no traffic
before a probe has seen them answer, and the prober probes each at once rather than at its
next round. (The store's side is tested in tests/gateway/fleet/test_memory.py.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from gateway.config import Upstream
from gateway.runtime import Runtime, build_runtime
from gateway.watch import prober
from tests.support import pool_config

# Rounds far apart, and every round's probes at its start: a probe soon after a member joins
# can only be the early one.
POOL = pool_config(health={"interval_s": 30.0, "jitter": 0.0})
ONE, TWO = ("10.0.0.1", 8000), ("10.0.0.2", 8000)
ID_ONE, ID_TWO = "pool@10.0.0.1:8000", "pool@10.0.0.2:8000"


def _healthy(rt: Runtime) -> dict[str, bool]:
    return {u.id: u.healthy for u in rt.store.snapshot(0.0).upstreams}


async def _until(cond: Callable[[], bool], limit_s: float) -> float:
    """Seconds until ``cond()`` holds, checked every 10 ms; fails past ``limit_s``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < limit_s, "not within the limit"
        await asyncio.sleep(0.01)
    return loop.time() - t0


async def test_a_member_that_joins_mid_round_is_probed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = build_runtime(POOL)
    probed: list[str] = []

    async def answers(rt: Runtime, u: Upstream) -> None:  # a probe that finds it up
        probed.append(u.id)
        rt.store.record_probe(u.id, True, 1.0, None)

    monkeypatch.setattr(prober, "probe_once", answers)
    rt.store.set_members("pool", (ONE,))
    task = asyncio.create_task(prober.probe_loop(rt, random.Random(0)))
    try:
        await _until(lambda: probed == [ID_ONE], 1.0)  # the first round
        rt.store.set_members("pool", (ONE, TWO))
        assert _healthy(rt) == {ID_ONE: True, ID_TWO: False}  # not before its probe
        # At once (the store says it joined), not at the next round 30 s on.
        await _until(lambda: ID_TWO in probed, 1.0)
        assert probed == [ID_ONE, ID_TWO]  # the one already there is not probed again
        assert _healthy(rt) == {ID_ONE: True, ID_TWO: True}
        # It leaves and comes back at once (a restarted pod): unprobed again, so probed again.
        rt.store.set_members("pool", (ONE,))
        rt.store.set_members("pool", (ONE, TWO))
        await _until(lambda: probed.count(ID_TWO) == 2, 1.0)
        assert _healthy(rt)[ID_TWO] is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
