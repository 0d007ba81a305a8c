"""The prober's completion probes: the ejections this worker made, not those it took from a
sibling worker (that one probes them, and their end reaches here through Redis)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from gateway.client.pool import Client
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


async def test_unhealthy_is_a_warning_and_healthy_again_is_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Both were WARNINGs: a log alert on warnings paged for every upstream that came back.
    status = [503]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status[0])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    one = {"id": "a", "region": "eu", "url": f"http://127.0.0.1:{port}", "models": ["m"]}
    cfg = {**CFG, "upstreams": [one]}
    rt = build_runtime(Config.model_validate(cfg))
    rt.session = Client(1.0)
    u = rt.store.upstreams()[0]
    try:
        with caplog.at_level(logging.INFO, logger="geogate"):
            for want in (503, 200):
                status[0] = want
                for _ in range(10):
                    await prober.probe_once(rt, u)
    finally:
        server.close()
        await server.wait_closed()
        await rt.session.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "is now" in r.getMessage()]
    assert said == [
        (logging.WARNING, "upstream a (eu) is now unhealthy: HTTP 503"),
        (logging.INFO, "upstream a (eu) is now healthy"),
    ]
