"""The prober's completion probes: the ejections this worker made, not those it took from a
sibling worker (that one probes them, and their end reaches here through Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.config import Config
from gateway.fleet.memory import MemoryStateStore
from gateway.runtime import build_runtime
from gateway.watch import prober

CFG = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "upstreams": [
        {"id": u, "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": ["m"]}
        for i, u in enumerate("abcdefghijklmnopqrst")  # 20: two may be out (10 %)
    ],
}


async def test_only_its_own_ejections_get_completion_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probed: list[str] = []

    async def completion_probe(rt: Any, u: Any) -> None:
        probed.append(u.id)

    monkeypatch.setattr(prober, "completion_probe", completion_probe)
    rt = build_runtime(Config.model_validate(CFG))
    now = time.monotonic()
    for _ in range(5):
        rt.store.record_result("a", False, now)  # ejected here
    assert isinstance(rt.store, MemoryStateStore)
    assert rt.store.adopt_ejection("b", now + 30, now)  # a sibling's, taken
    deep: dict[str, asyncio.Task[None]] = {}
    prober._start_completion_probes(rt, rt.store.upstreams(), deep)
    await asyncio.gather(*deep.values())
    assert probed == ["a"]
