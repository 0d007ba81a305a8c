"""One snapshot a second for every open page, encoded once; what turns a region red is pushed
at once, not at the next second."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import AuditUnwritable
from gateway.http.dashboard import sampler as sampler_module
from gateway.http.dashboard import state as state_module
from gateway.http.dashboard.sampler import Sampler
from gateway.runtime import Runtime, build_runtime
from geodb.location import Location
from tests.support import until

CONFIG = {
    "gateway": {"region": "eu"},
    "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
    "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
}


def runtime() -> Runtime:
    return build_runtime(Config.model_validate(CONFIG))


def parse(frame: bytes) -> tuple[str, dict[str, Any]]:
    text = frame.decode()
    event = next(line[7:] for line in text.splitlines() if line.startswith("event: "))
    data = next(line[6:] for line in text.splitlines() if line.startswith("data: "))
    return event, json.loads(data)


async def next_frame(frames: AsyncIterator[bytes], within_s: float) -> bytes:
    return await asyncio.wait_for(anext(frames), within_s)


async def next_tick(frames: AsyncIterator[bytes], within_s: float) -> bytes:
    """The next once-a-second frame (a change pushed between two is skipped)."""
    while True:
        frame = await next_frame(frames, within_s)
        if parse(frame)[0] == "tick":
            return frame


async def close(frames: AsyncIterator[bytes]) -> None:
    """A page leaving: Sampler.frames is an async generator (typed as the iterator it is)."""
    assert isinstance(frames, AsyncGenerator)
    await frames.aclose()


async def test_pages_get_the_history_then_one_shared_frame_a_second() -> None:
    rt = runtime()
    sampler = Sampler(rt)
    sampler.start()
    try:
        first, second = sampler.frames(), sampler.frames()
        hello = await next_frame(first, 1)
        assert hello.startswith(b"retry: ")
        event, data = parse(hello.split(b"\n\n", 1)[1])
        assert event == "hello" and data["state"]["regions"][0]["id"] == "eu"
        assert len(data["history"]) == 1  # sampled at start: the page has a first point
        await next_frame(second, 1)
        rt.traffic.attempt("a", True)
        rt.traffic.request(Location(51.5, -0.1, "GB", "EU"), "a", "m")
        a = await next_tick(first, 2)
        b = await next_tick(second, 1)
        assert a is b  # one encoding for every page
        event, data = parse(a)
        assert event == "tick"
        assert data["point"]["u"]["a"][0] > 0  # this second's requests/s
        assert data["state"]["places"][0]["country"] == "GB"
        assert len(sampler.history) == 2
        await close(first)
        await close(second)
        assert sampler._pages == 0
    finally:
        await sampler.stop()


async def test_a_health_change_is_pushed_within_a_tenth_of_a_second() -> None:
    rt = runtime()
    sampler = Sampler(rt)
    sampler.start()
    frames = sampler.frames()
    try:
        await next_frame(frames, 1)
        await next_tick(frames, 2)  # the next second starts now
        t0 = time.monotonic()
        rt.store.record_probe("a", False, None, "connection refused")
        # at once, not at the next tick a second away (with slack for the suite's other workers)
        event, data = parse(await next_frame(frames, 0.8))
        assert time.monotonic() - t0 < 0.8
        assert event == "state"
        assert data["state"]["upstreams"][0]["state"] == "down"
        assert data["state"]["regions"][0]["state"] == "down"
    finally:
        await close(frames)
        await sampler.stop()


async def test_the_audit_is_read_again_after_a_change() -> None:
    rt = runtime()
    sampler = Sampler(rt)
    sampler.start()
    frames = sampler.frames()
    try:
        await next_frame(frames, 1)
        await rt.store.update_upstream("a", {"weight": 2}, "alice")
        audit: list[dict[str, str]] = []
        for _ in range(5):  # the version change is seen within the second, the audit read
            _, data = parse(await next_frame(frames, 2))
            if audit := data["state"]["audit"]:
                break
        assert audit[0]["who"] == "alice" and audit[0]["what"] == "upstream a"
    finally:
        await close(frames)
        await sampler.stop()


async def test_a_look_after_a_change_has_its_audit_entry_without_waiting_for_a_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ctl top and /dashboard/api/state read with look(): a new version with no audit entry
    # for it lasted until the next sample, up to a second. No sample comes in this test.
    monkeypatch.setattr(sampler_module, "DASHBOARD_SAMPLE_S", 60.0)
    rt = runtime()
    sampler = Sampler(rt)
    sampler.start()
    try:
        sampler.look()  # watched from now on: the state follows changes within 0.1 s
        first = sampler._audit_task  # the start's audit read, of nothing yet
        assert first is not None
        await first
        await rt.store.update_upstream("a", {"weight": 2}, "alice")
        got = sampler.look()
        for _ in range(50):  # well within a second, and no sample comes for 60 s
            if [e["who"] for e in got["audit"]] == ["alice"]:
                break
            await asyncio.sleep(0.02)
            got = sampler.look()
        assert got["gateway"]["version"] == rt.store.version
        assert [e["who"] for e in got["audit"]] == ["alice"], got["audit"]
    finally:
        await sampler.stop()


async def test_with_nobody_looking_only_the_samples_run_and_a_look_is_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No page, no state read: no watch between samples (each was a wake-up and a
    fingerprint, ten a second) and no state built, yet the history goes on; a read gets a
    state built then."""
    rt = runtime()
    sampler = Sampler(rt)
    looked = built = 0
    fingerprint, build = sampler._fingerprint, state_module.build

    def counted_build(*args: Any) -> dict[str, Any]:
        nonlocal built
        built += 1
        return build(*args)

    monkeypatch.setattr(state_module, "build", counted_build)

    def counting() -> tuple[object, ...]:
        nonlocal looked
        looked += 1
        return fingerprint()

    sampler._fingerprint = counting  # type: ignore[method-assign]
    sampler.start()
    try:
        await rt.store.update_upstream("a", {"weight": 2}, "alice")  # an audit entry
        # A second or more of nobody looking: two samples (the second on a tick up to 1.25 s
        # after the first) and the audit's read.
        await until(
            lambda: len(sampler.history) >= 2 and bool(sampler.audit),
            within_s=3.0,
            what="two samples and the audit",
        )
        assert looked <= 3  # at start and at the sample(s); watching, it would be ~15
        assert len(sampler.history) >= 2  # the sparklines keep their past
        assert built == 0  # the samples read the point's figures alone
        rt.store.record_probe("a", False, None, "connection refused")
        state = sampler.look()
        assert state["upstreams"][0]["state"] == "down"  # built now, not a sample old
        assert state["audit"][0]["who"] == "alice"  # read by the samples meanwhile
        assert sampler.watched()
        since, deadline = looked, time.monotonic() + 2
        while looked < since + 3:  # the watch runs again, ten times a second
            assert time.monotonic() < deadline, "the watch did not start again"
            await asyncio.sleep(0.05)
    finally:
        await sampler.stop()


async def test_an_audit_key_that_is_no_stream_is_said_and_the_sampler_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reading it raises AuditUnwritable (Redis answered), which the audit task did not catch:
    # it died, the page showed no audit and no reason, and stop() re-raised it.
    rt = runtime()

    async def no_stream(count: int) -> list[dict[str, str]]:
        raise AuditUnwritable("the fleet's audit log in Redis ({geogate:x}:audit) is not a stream")

    monkeypatch.setattr(rt.store, "audit", no_stream)
    sampler = Sampler(rt)
    sampler.start()
    task = sampler._audit_task
    assert task is not None
    await task  # ended on no error of its own
    assert sampler.audit_error == (
        "audit unavailable: the fleet's audit log in Redis ({geogate:x}:audit) is not a stream"
    )
    await sampler.stop()
