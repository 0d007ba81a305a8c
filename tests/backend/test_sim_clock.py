"""The sim-backend's token clocks (backend.sim_config.SimConfig.clock), through its real
socket: what bench/ab.py's ``--clock`` relies on to pace streams as a model server would."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.cli.procs import free_port, geogate_cmd
from tests.support import start_sim

pytestmark = pytest.mark.serial  # timed: scripts/dev test runs it alone (pyproject)

RATE = 5.0  # tokens/s: a 200 ms step, wide against a loaded machine's timer jitter
STEP_S = 1 / RATE
STAGGER_S = 0.08  # the second stream starts this long after the first: 0.4 of a step


async def _token_times(port: int, tokens: int) -> list[float]:
    """Arrival times (loop clock) of each content token of one streamed completion, read off
    a raw socket: no client library's set-up time (an SSL context, a pool) between the call
    and the request, which would blur the stagger these tests set."""
    loop = asyncio.get_running_loop()
    doc = {"model": "m", "stream": True, "max_tokens": tokens, "messages": [{"role": "user"}]}
    body = json.dumps(doc).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    times: list[float] = []
    while line := await reader.readline():
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                times.append(loop.time())
    writer.close()
    assert len(times) == tokens
    return times


async def _two_staggered(port: int) -> tuple[list[float], list[float]]:
    first = asyncio.ensure_future(_token_times(port, 4))
    await asyncio.sleep(STAGGER_S)
    second = await _token_times(port, 4)
    return await first, second


def _offsets(a: list[float], b: list[float]) -> list[float]:
    """How far each of b's tokens lies from a's grid (a step apart, through the median of a's
    tokens' places on it: no one late token sets it); b may start a step after a."""

    def off(t: float, ref: float) -> float:  # t's place on ref's grid, in [-STEP_S/2, STEP_S/2)
        return (t - ref + STEP_S / 2) % STEP_S - STEP_S / 2

    grid = a[0] + statistics.median(off(t, a[0]) for t in a)
    return [abs(off(t, grid)) for t in b]


def test_streams_started_apart_keep_apart_on_their_own_clocks(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "own", "local", ["m"], "--tokens-per-s", str(RATE))
    try:
        a, b = asyncio.run(_two_staggered(sim.port))
    finally:
        sim.proc.terminate()
        sim.proc.wait()
    # Each stream's tokens one step apart, and the second's STAGGER_S after the first's.
    assert all(abs((y - x) - STEP_S) < STEP_S / 2 for x, y in itertools.pairwise(b))
    assert min(_offsets(a, b)) > STAGGER_S / 2


def test_in_lockstep_the_tokens_of_streams_started_apart_leave_together(tmp_path: Path) -> None:
    knobs = ("--tokens-per-s", str(RATE), "--clock", "lockstep")
    sim = start_sim(tmp_path, "lock", "local", ["m"], *knobs)
    try:
        a, b = asyncio.run(_two_staggered(sim.port))
    finally:
        sim.proc.terminate()
        sim.proc.wait()
    # On the same decode steps: the second stream's tokens arrive with the first's (its
    # first token waits, less than one step, for the step after its start).
    assert max(_offsets(a, b)) < STAGGER_S / 2
    assert all(abs((y - x) - STEP_S) < STEP_S / 2 for x, y in itertools.pairwise(b))


def test_a_random_clock_starts_within_one_step_late_and_keeps_the_pace(tmp_path: Path) -> None:
    knobs = ("--tokens-per-s", str(RATE), "--clock", "random", "--ttft-ms", "0")
    sim = start_sim(tmp_path, "rand", "local", ["m"], *knobs)
    try:

        async def one() -> tuple[float, list[float]]:
            t0 = asyncio.get_running_loop().time()
            return t0, await _token_times(sim.port, 4)

        runs = [asyncio.run(one()) for _ in range(6)]
    finally:
        sim.proc.terminate()
        sim.proc.wait()
    late = [times[0] - t0 for t0, times in runs]
    # The first token (i = 0, TTFT 0) is due at the stream's random offset in [0, one step).
    assert all(0 <= x < STEP_S + 0.1 for x in late), late
    assert max(late) - min(late) > 0.01, late  # not one fixed delay: the offsets differ
    for _, times in runs:
        assert all(abs((y - x) - STEP_S) < STEP_S / 2 for x, y in itertools.pairwise(times))


def test_an_unknown_clock_is_refused_at_run_time_and_on_the_command_line(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "knob", "local", ["m"])
    try:
        r = httpx.post(f"{sim.url}/sim/config", json={"clock": "sundial"}, timeout=5)
        assert r.status_code == 400
        assert "stream, random, lockstep" in r.json()["error"]["message"]
        # A rate that would break a lockstep stream mid-answer (a step of 1/inf), or none.
        for bad in ('{"tokens_per_s": Infinity, "clock": "lockstep"}', '{"ttft_ms": -5}'):
            r = httpx.post(f"{sim.url}/sim/config", content=bad, timeout=5)
            assert r.status_code == 400 and "a finite number of at least 0" in r.text, bad
        ok = httpx.post(f"{sim.url}/sim/config", json={"clock": "lockstep"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["clock"] == "lockstep"
        assert ok.json()["tokens_per_s"] == 0.0  # the refused changes left nothing behind
    finally:
        sim.proc.terminate()
        sim.proc.wait()
    for args, why in (
        (["--clock", "sundial"], "invalid choice: 'sundial'"),
        (["--tokens-per-s", "inf"], "tokens_per_s: a finite number of at least 0, not inf"),
    ):
        cmd = geogate_cmd("sim-backend", "--port", str(free_port()), *args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert why in done.stderr and "Traceback" not in done.stderr
