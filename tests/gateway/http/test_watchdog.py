"""The stream watchdog: idle and total deadlines, and cancellations that are not its own."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from gateway.http.watchdog import TotalTimeout, Watchdog


async def _stream(wd: Watchdog, gaps: list[float]) -> int:
    chunks = 0
    for gap in gaps:
        wd.touch()
        await asyncio.sleep(gap)
        chunks += 1
    return chunks


def test_no_chunk_within_idle_s_is_a_timeout() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError), Watchdog(0.05, 10) as wd:
            await _stream(wd, [0.01, 0.01, 0.5])
        return loop.time() - t0

    took = asyncio.run(main())
    assert 0.06 <= took < 1.0  # two quick chunks, then 0.05 s idle (a busy machine: slack)


def test_chunks_keep_it_alive_past_idle_s_until_the_deadline() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done = 0
        with pytest.raises(TimeoutError), Watchdog(0.05, 0.3) as wd:
            for _ in range(100):
                wd.touch()
                await asyncio.sleep(0.02)  # always within idle_s
                done += 1
        return done, loop.time() - t0

    done, took = asyncio.run(main())
    assert 0.29 <= took < 1.5  # the total deadline, long after idle_s would have passed
    assert done >= 5


def test_a_stream_that_ends_in_time_is_left_alone() -> None:
    async def main() -> int:
        with Watchdog(0.05, 10) as wd:
            n = await _stream(wd, [0.03] * 5)  # 0.15 s in all, no gap over idle_s
        await asyncio.sleep(0.1)  # no late cancel after the block
        return n

    assert asyncio.run(main()) == 5


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def guarded() -> None:
        with Watchdog(10, 10):
            await asyncio.sleep(5)

    async def main() -> None:
        task = asyncio.create_task(guarded())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_an_outside_cancel_on_top_of_an_expiry_is_not_hidden() -> None:
    async def guarded(hold: asyncio.Event) -> None:
        with Watchdog(0.01, 10):
            try:
                await asyncio.sleep(5)
            finally:
                hold.set()
                await asyncio.sleep(0.05)  # the outside cancel lands here

    async def main() -> None:
        hold = asyncio.Event()
        task = asyncio.create_task(guarded(hold))
        await hold.wait()  # the watchdog fired
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_given_its_task_it_guards_that_one_on_that_tasks_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None

        def no_lookup(*_: object) -> None:
            raise AssertionError("the loop looked up: a getpid() in CPython 3.11")

        with monkeypatch.context() as m:
            m.setattr(asyncio, "current_task", no_lookup)
            m.setattr(asyncio, "get_running_loop", no_lookup)
            wd = Watchdog(0.05, 10, me)
        assert wd.clock == me.get_loop().time
        with pytest.raises(TimeoutError), wd:
            await asyncio.sleep(0.5)

    asyncio.run(main())


class Source:
    """A splice's stamps and probes, counted."""

    def __init__(self, last: float) -> None:
        self.last = last
        self.probes: list[float] = []

    def probe(self) -> bool:
        self.probes.append(asyncio.get_running_loop().time())
        return False


def test_a_silent_source_is_probed_every_probe_s_and_a_flowing_one_never() -> None:
    async def main() -> tuple[list[float], list[float], float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with Watchdog(10, 10, probe_s=0.1) as wd:
            silent = Source(loop.time())
            wd.watch(silent)
            await asyncio.sleep(0.45)  # silent: probed at about 0.1, 0.2, 0.3, 0.4
        with Watchdog(10, 10, probe_s=0.1) as wd:
            flowing = Source(loop.time())
            wd.watch(flowing)
            for _ in range(9):
                await asyncio.sleep(0.05)
                flowing.last = loop.time()  # a read every 0.05 s
        return silent.probes, flowing.probes, t0

    silent, flowing, t0 = asyncio.run(main())
    assert 3 <= len(silent) <= 4 and silent[0] - t0 >= 0.1 - 0.01
    assert all(b - a >= 0.1 - 0.01 for a, b in itertools.pairwise(silent))
    assert flowing == []


def test_without_a_source_the_timer_waits_for_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No source to ask (a stream on the Python relay): no timer every probe_s, only at the
    idle or total deadline; and once a source is no longer watched, the probes stop too."""
    checks = 0
    check = Watchdog._check

    def counted(self: Watchdog) -> None:
        nonlocal checks
        checks += 1
        check(self)

    monkeypatch.setattr(Watchdog, "_check", counted)

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        cpu = time.process_time()
        with Watchdog(10, 10, probe_s=0.05) as wd:
            await asyncio.sleep(0.5)
            alone = checks
            source = Source(loop.time())
            wd.watch(source)
            await asyncio.sleep(0.2)  # probed about 4 times
            wd.watch(None)
            probed = len(source.probes)
            await asyncio.sleep(0.3)
            assert len(source.probes) == probed  # no longer asked
        assert time.process_time() - cpu < 0.2  # and no spin
        return alone, probed

    alone, probed = asyncio.run(main())
    assert alone == 0
    assert probed >= 2


def test_a_source_watched_before_entering_is_probed_and_its_stamps_outlive_it() -> None:
    """watch() before ``with`` arms the probe as entering does; watch(None) keeps the source's
    last stamp as activity (a splice's last read counts toward the idle deadline after it)."""

    async def main() -> tuple[list[float], float, float]:
        loop = asyncio.get_running_loop()
        wd = Watchdog(10, 10, probe_s=0.1)
        source = Source(loop.time())
        wd.watch(source)
        with wd:
            await asyncio.sleep(0.25)  # probed at about 0.1 and 0.2
            source.last = stamp = loop.time()
            wd.watch(None)
            return source.probes, wd.last, stamp

    probes, last, stamp = asyncio.run(main())
    assert len(probes) >= 1
    assert last == stamp


def test_a_silence_the_client_holds_back_is_not_idle_but_the_deadline_still_counts() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        held = [True]
        t0 = loop.time()
        with Watchdog(0.05, 10) as wd:
            wd.held = lambda: held[0]
            await asyncio.sleep(0.3)  # six idle times with the client's writes paused
        quiet = loop.time() - t0
        with pytest.raises(TimeoutError), Watchdog(0.05, 0.2) as wd:
            wd.held = lambda: held[0]
            await asyncio.sleep(5)
        capped = loop.time() - t0 - quiet
        held[0] = False
        with pytest.raises(TimeoutError), Watchdog(0.05, 10) as wd:
            wd.held = lambda: held[0]
            await asyncio.sleep(5)  # nothing held back: the upstream's own silence
        return quiet, capped

    quiet, capped = asyncio.run(main())
    assert quiet >= 0.3 and 0.19 <= capped < 1.5


def test_the_total_deadline_says_so_and_a_silence_does_not() -> None:
    async def main() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
        kinds: list[type[BaseException]] = []
        for idle_s, left_s, gaps in ((10, 0.1, [0.02] * 50), (0.05, 10, [0.5]), (10, -1, [0.5])):
            try:
                with Watchdog(idle_s, left_s) as wd:
                    await _stream(wd, gaps)
            except TimeoutError as exc:
                kinds.append(type(exc))
        total, idle, past = kinds
        return total, idle, past

    total, idle, past = asyncio.run(main())
    assert total is TotalTimeout  # chunks kept coming, then total_s (the caller's own limit)
    assert idle is TimeoutError  # a silence: the source's failure
    assert past is TotalTimeout  # a deadline already passed is the total one too


def test_before_the_first_token_a_silence_waits_for_the_first_tokens_deadline() -> None:
    """A role chunk, then a prefill longer than idle_s: no cut before first_s (the stream's
    first_byte_s); a silence past it is cut, as a silence of idle_s is once the token came."""

    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with Watchdog(0.05, 10, first_s=0.3) as wd:
            await asyncio.sleep(0.2)  # four idle_s of prefill: not cut
            wd.token()
            await asyncio.sleep(0.03)  # tokens then flow as usual
            wd.touch()
        served = loop.time() - t0
        t0 = loop.time()
        with pytest.raises(TimeoutError), Watchdog(0.05, 10, first_s=0.3):
            await asyncio.sleep(5)  # no token ever: cut at first_s
        stuck = loop.time() - t0
        t0 = loop.time()
        with pytest.raises(TimeoutError), Watchdog(0.05, 10, first_s=5) as wd:
            await asyncio.sleep(0.01)
            wd.token()  # the timer stood at first_s: re-armed at idle_s from the token
            await asyncio.sleep(5)
        after_token = loop.time() - t0
        return served, stuck, after_token

    served, stuck, after_token = asyncio.run(main())
    assert served >= 0.23
    assert 0.29 <= stuck < 1.5
    assert 0.05 <= after_token < 1.0


def test_chunks_the_token_test_misses_keep_a_stream_alive_past_the_first_tokens_deadline() -> None:
    """The later of the two deadlines: a tool call's arguments (no "content") flow past first_s
    and are not cut as long as none of their silences reaches idle_s."""

    async def main() -> int:
        with Watchdog(0.1, 10, first_s=0.05) as wd:
            return await _stream(wd, [0.04] * 8)  # 0.32 s of chunks, none a token

    assert asyncio.run(main()) == 8
