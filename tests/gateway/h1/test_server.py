"""gateway.h1.server: uvicorn's main loop, woken once a second yet leaving at once when told
to, from the loop (the app's drain) or from a signal handler (another frame, any moment)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest
import uvicorn

from gateway.h1 import server as module
from gateway.h1.server import Server


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("no request is served in these tests")


async def _waiting(srv: Server) -> None:
    """Until the main loop waits for its next tick (polled, not slept on)."""
    async with asyncio.timeout(2.0):
        while srv._waiter is None:  # noqa: ASYNC110 (the server's own state: no event to wait on)
            await asyncio.sleep(0)


def _server() -> Server:
    config = uvicorn.Config(_app, log_config=None, date_header=True, server_header=False)
    config.load()
    return Server(config)


def test_should_exit_set_on_the_loop_ends_the_main_loop_at_once() -> None:
    async def main() -> float:
        srv = _server()
        loop_task = asyncio.ensure_future(srv.main_loop())
        await _waiting(srv)
        assert not loop_task.done()  # waiting for its next tick, a second away
        t0 = time.perf_counter()
        srv.should_exit = True  # what gateway.server's stop() does once the drain is done
        await asyncio.wait_for(loop_task, 0.5)
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.5  # not the tick's 1 s


def test_a_signal_handlers_exit_wakes_it_from_another_thread_too() -> None:
    async def main() -> None:
        srv = _server()
        loop_task = asyncio.ensure_future(srv.main_loop())
        await _waiting(srv)
        # uvicorn's handler for SIGTERM; a thread stands in for a signal's arbitrary moment.
        threading.Timer(0.05, srv.handle_exit, (signal.SIGTERM, None)).start()
        await asyncio.wait_for(loop_task, 0.6)
        assert srv.should_exit

    asyncio.run(main())


def test_each_tick_refreshes_the_date_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "SERVER_TICK_S", 0.02)
    counters: list[int] = []

    async def main() -> None:
        srv = _server()
        on_tick = srv.on_tick

        async def tick(counter: int) -> bool:
            counters.append(counter)
            srv.server_state.default_headers = []
            done = await on_tick(counter)
            # uvicorn refreshes the Date header only on a tick whose counter says a second
            assert [k for k, _ in srv.server_state.default_headers] == [b"date"]
            return done or len(counters) >= 5

        srv.on_tick = tick  # type: ignore[method-assign]
        await asyncio.wait_for(srv.main_loop(), 2.0)

    asyncio.run(main())
    assert counters == [module.TICK_COUNTER] * 5 and module.TICK_COUNTER % 10 == 0


def test_an_exit_before_the_loop_starts_ends_it_on_its_first_tick() -> None:
    async def main() -> None:
        srv = _server()
        srv.should_exit = True  # a signal during start-up: no loop to wake yet
        await asyncio.wait_for(srv.main_loop(), 0.5)

    asyncio.run(main())


def test_an_exit_set_while_a_tick_runs_is_not_left_waiting_for_the_next() -> None:
    async def main() -> float:
        srv = _server()
        on_tick = srv.on_tick
        ticks = 0

        async def tick(counter: int) -> bool:
            nonlocal ticks
            ticks += 1
            if ticks == 2:
                srv.should_exit = True  # set inside the tick; this tick still says go on
                return False
            return await on_tick(counter)

        srv.on_tick = tick  # type: ignore[method-assign]
        t0 = time.perf_counter()
        await asyncio.wait_for(srv.main_loop(), 2.5)
        return time.perf_counter() - t0

    # the first wait is a whole tick (1 s); after the exit, no second one
    assert asyncio.run(main()) < 1.5
