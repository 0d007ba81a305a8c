"""forward(): the attempts run in the request's task, watched for the client leaving."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.http import forward as forwarding
from gateway.http.asgi import DISCONNECT_HOOK
from gateway.http.forward import forward
from gateway.http.upstream import ClientGone

EX: Any = SimpleNamespace(scope={})  # a server without the disconnect hook: receive is watched
_asked: list[object] = []  # forward's calls of RT.current_task, each the task it got


def _current_task() -> object:
    _asked.append(asyncio.current_task())
    return _asked[-1]


RT: Any = SimpleNamespace(current_task=_current_task)  # what forward asks of Runtime


class FakeAttempts:
    """Stands for Attempts: runs for ``run_s``, then answers 200; notes a cancellation."""

    run_s = 0.0
    cancelled = 0

    def __init__(self, rt: Any, ex: Any, send: Any, task: Any) -> None:
        pass

    async def run(self) -> int:
        try:
            await asyncio.sleep(FakeAttempts.run_s)
        except asyncio.CancelledError:
            FakeAttempts.cancelled += 1
            raise
        return 200


@pytest.fixture(autouse=True)
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarding, "Attempts", FakeAttempts)
    # The watch at once, as the tests below were written for; its delay is tested last.
    monkeypatch.setattr(forwarding, "DISCONNECT_WATCH_DELAY_S", 0.0)
    FakeAttempts.cancelled = 0


def receive_after(delay_s: float) -> Any:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(delay_s)
        return {"type": "http.disconnect"}

    return receive


async def send(message: Any) -> None:
    return None


async def test_the_client_leaving_cancels_the_attempts() -> None:
    FakeAttempts.run_s = 5
    with pytest.raises(ClientGone):
        await forward(RT, EX, receive_after(0.01), send)
    assert FakeAttempts.cancelled == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancellation ended there
    await asyncio.sleep(0.01)  # and nothing is left to cancel what the task does next


async def test_an_answer_before_the_client_leaves_is_returned_and_nothing_cancels_later() -> None:
    FakeAttempts.run_s = 0.0
    _asked.clear()
    assert await forward(RT, EX, receive_after(0.0), send) == 200
    assert _asked == [asyncio.current_task()]  # asked of the runtime, once
    # The watch may finish in the same loop turn: it must not cancel this task afterwards.
    await asyncio.sleep(0.05)
    assert FakeAttempts.cancelled == 0


async def test_a_cut_from_outside_stays_a_cancellation() -> None:
    # The drain's cut (gateway.http.gate) is not the client leaving: the client is still
    # there, and gateway.http.intake answers it (503) where the response has not started.
    FakeAttempts.run_s = 5

    async def request() -> str:
        try:
            await forward(RT, EX, receive_after(60), send)
        except ClientGone:
            return "gone"
        except asyncio.CancelledError:
            return "cancelled"
        return "answered"

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "cancelled" and FakeAttempts.cancelled == 1


async def test_the_watch_starts_after_its_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast answer never calls receive (no watch task); a client that left at once is
    noticed when the delay ends, and the attempts are cancelled then."""
    monkeypatch.setattr(forwarding, "DISCONNECT_WATCH_DELAY_S", 0.1)
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.disconnect"}  # the client is already gone

    FakeAttempts.run_s = 0.0
    assert await forward(RT, EX, receive, send) == 200
    assert calls == 0
    FakeAttempts.run_s = 5
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ClientGone):
        await forward(RT, EX, receive, send)
    assert calls == 1 and FakeAttempts.cancelled == 1
    assert 0.1 <= loop.time() - t0 < 1.0


class Hook:
    """gateway.h1's disconnect hook, as the proxy sees it through scope["extensions"]."""

    def __init__(self, lost: bool = False) -> None:
        self.lost = lost
        self.callback: Any = None
        self.calls: list[bool] = []  # True: a callback was set, False: cleared

    def __call__(self, callback: Any) -> None:
        self.calls.append(callback is not None)
        if callback is not None and self.lost:
            callback()
            return
        self.callback = callback

    def ex(self) -> Any:
        return SimpleNamespace(scope={"extensions": {DISCONNECT_HOOK: self}})


async def test_a_server_that_reports_the_disconnect_needs_no_watch() -> None:
    """With the hook, receive is never called, not even after the watch's delay; the hook's
    callback cancels the attempts; it is cleared when forward ends, either way."""

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive must not be watched when the server reports disconnects")

    hook = Hook()
    FakeAttempts.run_s = 0.0
    assert await forward(RT, hook.ex(), receive, send) == 200
    assert hook.calls == [True, False] and hook.callback is None
    FakeAttempts.run_s = 5
    asyncio.get_running_loop().call_later(0.05, lambda: hook.callback())
    with pytest.raises(ClientGone):
        await forward(RT, hook.ex(), receive, send)
    assert FakeAttempts.cancelled == 1 and hook.calls == [True, False, True, False]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_client_already_gone_is_noticed_at_once() -> None:
    hook = Hook(lost=True)
    FakeAttempts.run_s = 5
    with pytest.raises(ClientGone):
        await asyncio.wait_for(forward(RT, hook.ex(), None, send), 1)  # type: ignore[arg-type]
    assert FakeAttempts.cancelled == 1
