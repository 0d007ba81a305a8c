"""With server.workers > 1, one scrape of /metrics is the whole gateway's, whichever worker the
kernel hands it: each worker serves its own families on a Unix socket in a private directory,
and the one asked answers with its siblings' and its own, each worker's series labelled with
its index. Without that, Prometheus scraping a worker at a time saw counters jump between the
workers' values; with them summed, a worker missing from one scrape (or restarted) made every
count drop, which Prometheus reads as a reset and adds whole as an increase."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from gateway import defaults as d
from gateway.http.endpoints import Endpoints
from gateway.http.worker_metrics import (
    END,
    ENV_METRICS_DIR,
    ENV_WORKER,
    WorkerMetrics,
    claim,
    runtime_dir,
)
from gateway.runtime import build_runtime
from tests.support import CHAT_BODY, Gateway, eu_config, eventually, start_fleet

CONFIG = eu_config(server={"workers": 3})
SCRAPE = Request({"type": "http", "method": "GET", "path": "/metrics", "headers": []})
COUNTS = ("_total", "_count", "_bucket", "_sum")
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _series(text: str | bytes | memoryview) -> Series:
    if not isinstance(text, str):
        text = bytes(text).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _sums(text: str | bytes | memoryview) -> dict[str, float]:
    """Each sample name's total over its label sets (the workers' included)."""
    out: dict[str, float] = {}
    for (name, _), value in _series(text).items():
        out[name] = out.get(name, 0.0) + value
    return out


def _per_worker(series: Series, name: str) -> dict[str, float]:
    """Sample ``name``'s total by worker label."""
    out: dict[str, float] = {}
    for (n, labels), value in series.items():
        if n == name:
            w = dict(labels)["worker"]
            out[w] = out.get(w, 0.0) + value
    return out


def _own_text(got: bytes) -> str:
    """A worker's answer to its siblings, as exposition text (its own families' lines)."""
    assert got.endswith(END)
    families = json.loads(got[: -len(END)])["families"]
    return "".join(f[2] + f[3] for f in families if f[1] == "own")


@pytest.fixture
def directory() -> Iterator[Path]:
    with runtime_dir(CONFIG.server.workers) as path:
        assert path is not None
        yield path


def test_the_directory_is_private_named_to_the_workers_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_WORKER, "5")  # from whoever started us: not this gateway's workers'
    with runtime_dir(2) as path:
        assert path is not None and os.environ[ENV_METRICS_DIR] == str(path)
        assert ENV_WORKER not in os.environ
        assert stat.S_IMODE(path.stat().st_mode) == 0o700  # the workers' numbers: ours alone
        (path / "1.sock").touch()  # a worker's socket, left behind
    assert not path.exists() and ENV_METRICS_DIR not in os.environ
    with runtime_dir(1) as none:  # one worker: its /metrics is the gateway's already
        assert none is None and ENV_METRICS_DIR not in os.environ


def test_a_worker_is_forkeds_index_or_claims_the_lowest_free_one(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = build_runtime(CONFIG)
    monkeypatch.setenv(ENV_WORKER, "1")  # gateway.server.Forked's, for uvicorn
    forked = WorkerMetrics.from_env(rt)
    assert forked is not None and forked.worker == "1" and forked.path == directory / "1.sock"
    monkeypatch.delenv(ENV_WORKER)  # granian's: none given
    first, second = WorkerMetrics.from_env(rt), WorkerMetrics.from_env(rt)
    assert first is not None and second is not None
    assert (first.worker, second.worker) == ("0", "1")
    asyncio.run(first.stop())  # or died: the kernel lets go of its lock either way
    again = WorkerMetrics.from_env(rt)  # the one started in its place
    assert again is not None and again.worker == "0"
    held = [claim(directory) for _ in range(2)]
    assert [index for index, _ in held] == [2, 3]  # while a reload's old workers hold theirs
    for _, fd in held:
        os.close(fd)
    for w in (second, again):
        asyncio.run(w.stop())


async def test_whichever_worker_is_asked_answers_with_all_of_them(directory: Path) -> None:
    rts = [build_runtime(CONFIG) for _ in range(2)]
    workers = [WorkerMetrics(rt, directory, name) for rt, name in zip(rts, "ab", strict=True)]
    for w in workers:
        await w.start()
    try:
        for rt, n in zip(rts, (3, 4), strict=True):
            for _ in range(n):
                rt.metrics.requests.count("200", "eu")
        for w in workers:
            got = _series((await w.metrics(SCRAPE)).body)
            assert _per_worker(got, "geogate_requests_total") == {"a": 3, "b": 4}
            assert got[("geogate_workers", ())] == 3
            assert got[("geogate_workers_scraped", ())] == 2
    finally:
        for w in workers:
            await w.stop()
    assert not os.listdir(directory)  # each removed its socket


async def test_a_sibling_left_out_or_restarted_lowers_no_count_of_the_others(
    directory: Path,
) -> None:
    """The reviewer's case. Summed, every count dropped when one worker was missing from a
    scrape (or restarted from 0), and Prometheus adds a dropped counter's whole value as an
    increase (a counter at 1e6: 1e6 requests that never happened). Labelled, the others'
    series keep their values; the missing worker's are a gap, the restarted one's its reset."""
    rts = [build_runtime(CONFIG) for _ in range(3)]
    workers = [WorkerMetrics(rt, directory, name) for rt, name in zip(rts, "abc", strict=True)]
    for w in workers:
        await w.start()
    try:
        for rt, n in zip(rts, (3, 5, 2), strict=True):
            for _ in range(n):
                rt.metrics.requests.count("200", "eu")
                rt.metrics.duration.observe_at(0.3, "eu")
            rt.metrics.retries.inc(n)
        before = _series((await workers[0].metrics(SCRAPE)).body)
        await workers[1].stop()  # b: missing from the next scrape
        missing = _series((await workers[0].metrics(SCRAPE)).body)
        assert missing[("geogate_workers_scraped", ())] == 2
        workers[1] = WorkerMetrics(build_runtime(CONFIG), directory, "b")  # b again, from 0
        await workers[1].start()
        restarted = _series((await workers[2].metrics(SCRAPE)).body)
        for after in (missing, restarted):
            counts = {k: v for k, v in after.items() if k[0].endswith(COUNTS)}
            assert counts
            for (name, labels), value in counts.items():
                if ("worker", "b") not in labels:
                    assert value == before[(name, labels)], (name, labels)
        assert _per_worker(restarted, "geogate_retries_total") == {"a": 3, "b": 0, "c": 2}
    finally:
        for w in workers:
            await w.stop()


async def test_a_sibling_that_does_not_answer_is_left_out_not_a_failed_scrape(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = build_runtime(CONFIG)
    rt.metrics.requests.count("200", "eu")
    me = WorkerMetrics(rt, directory, "me", timeout_s=0.2)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a worker whose loop is stuck: never answers, until we hang up

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"worker": "cut", "families": [')  # no END: its worker exiting
        writer.close()

    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"geogate_requests_total 5.0" + END)  # not what a worker sends
        writer.close()

    servers = [
        await asyncio.start_unix_server(answer, path=directory / f"{name}.sock")
        for name, answer in (("hung", hang), ("cut", cut_short), ("garbled", garbled))
    ]
    # A worker killed (SIGKILL) leaves its socket file with nobody listening on it. Under
    # granian, whose workers claim their index, nobody holds its lock: it is removed. Under
    # uvicorn, no lock: its replacement, forked at once with its index, binds it again.
    for name in ("gone", "restarting"):
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(directory / f"{name}.sock"))
    (directory / "gone.lock").touch()
    await me.start()
    try:
        with caplog.at_level(logging.WARNING, logger="geogate"):
            response = await me.metrics(SCRAPE)
        assert response.status_code == 200
        got = _series(response.body)
        assert _per_worker(got, "geogate_requests_total") == {"me": 1}
        assert (got[("geogate_workers", ())], got[("geogate_workers_scraped", ())]) == (3, 1)
        assert not (directory / "gone.sock").exists()  # else tried in every scrape after
        assert (directory / "restarting.sock").exists()  # its replacement's to replace
        logged = caplog.text
        assert "worker hung did not answer (TimeoutError())" in logged
        assert "worker cut's answer was cut short" in logged
        assert "worker garbled's answer unreadable" in logged
        assert "removed gone.sock, a worker's that is gone" in logged
        assert "worker restarting did not answer (ConnectionRefusedError" in logged
    finally:
        await me.stop()
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_a_worker_answers_its_siblings_with_its_own_numbers_and_an_end(
    directory: Path,
) -> None:
    rt = build_runtime(CONFIG)
    rt.metrics.requests.count("200", "eu")
    me = WorkerMetrics(rt, directory, "me")
    await me.start()
    try:
        reader, writer = await asyncio.open_unix_connection(me.path)
        got = await reader.read()
        writer.close()
    finally:
        await me.stop()
    own = _series(_own_text(got))
    assert own[("geogate_requests_total", (("code", "200"), ("region", "eu"), ("worker", "me")))]
    assert "geogate_workers" not in got.decode()  # its own registry's, nothing merged


async def test_a_worker_brings_its_gauges_up_to_date_as_its_own_metrics_does(
    directory: Path,
) -> None:
    """WorkerMetrics.own does what Endpoints.metrics does before it renders (the upstreams'
    in-flight gauges, the config version, the ejection and model gauges, counters of each
    upstream at 0): each on a runtime of its own, fresh, the same series and values."""
    single = _series((await Endpoints(build_runtime(CONFIG)).metrics(SCRAPE)).body)
    me = WorkerMetrics(build_runtime(CONFIG), directory, "0")
    merged = _series((await me.metrics(SCRAPE)).body)
    unlabelled = {
        (name, tuple(kv for kv in labels if kv[0] != "worker")): value
        for (name, labels), value in merged.items()
        if not name.startswith("geogate_workers") and not name.endswith("_created")
    }
    assert unlabelled == {k: v for k, v in single.items() if not k[0].endswith("_created")}
    assert ("geogate_upstream_in_flight", (("region", "eu"), ("upstream", "a"))) in single


@pytest.fixture
def short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short TMPDIR for the gateway: where it makes its directory, for the test to look
    into, and short because a Unix socket's path must fit in 108 bytes (pytest's tmp_path
    can be longer)."""
    with tempfile.TemporaryDirectory(prefix="gg") as path:
        monkeypatch.setenv("TMPDIR", path)
        yield Path(path)


def _scrape(gw: Gateway) -> Series:
    return _scrape_owned(gw)[0]


def _scrape_owned(gw: Gateway) -> tuple[Series, int]:
    """/metrics on a connection of its own, as Prometheus' scrapes 15 s apart get (keep-alive
    5 s): the kernel hands each to whichever worker accepts it first. And that worker's pid,
    the owner of the connection's server side while it is open."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.ops_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
        ss = ["ss", "-tnpH", "state", "established", f"( sport = :{gw.ops_port} )"]
        out = subprocess.run(ss, capture_output=True, text=True, check=True).stdout
    finally:
        conn.close()
    [owner] = {int(pid) for pid in re.findall(r"pid=(\d+)", out)}
    return _series(body), owner


def _worker_own(sock: Path) -> dict[str, float]:
    """One worker's own numbers, read from its socket as its siblings do."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    return _sums(_own_text(got))


def _serve(gw: Gateway, n: int) -> None:
    for _ in range(n):  # a connection each: SO_REUSEPORT spreads them over both workers
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, timeout=10)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("engine", ["uvicorn", "granian"])
def test_every_scrape_of_a_two_worker_gateway_has_every_workers_series(
    tmp_path: Path, short_tmpdir: Path, engine: str
) -> None:
    n, k = 24, 12
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"\nworkers = 2')
    try:
        [directory] = short_tmpdir.glob("geogate-metrics-*")
        # Forked's indexes under uvicorn; the lowest free under granian: the same two.
        socks = {"0.sock", "1.sock"}
        eventually(lambda: {p.name for p in directory.glob("*.sock")} == socks, what="sockets")
        eventually(lambda: _scrape(gw)[("geogate_workers_scraped", ())] == 2, what="both")
        _serve(gw, n)
        # Each worker served some, so no worker's own numbers alone could total n.
        own = {s.stem: _worker_own(s)["geogate_requests_total"] for s in directory.glob("*.sock")}
        assert sum(own.values()) == n and all(0 < x < n for x in own.values()), own
        answered: list[int] = []

        def scrape_has_all() -> bool:
            got, owner = _scrape_owned(gw)
            assert _per_worker(got, "geogate_requests_total") == own, got
            count = _per_worker(got, "geogate_request_duration_seconds_count")
            assert count == own
            assert (got[("geogate_workers", ())], got[("geogate_workers_scraped", ())]) == (2, 2)
            answered.append(owner)
            return len(answered) >= k and len(set(answered)) == 2

        # At least k scrapes, and on until both workers have answered some: the same series
        # from either (they take turns in practice; the deadline only bounds an unlucky run).
        eventually(scrape_has_all, what="scrapes answered by both workers")
    finally:
        gw.stop()
        sim.proc.kill()
    assert not directory.exists()  # the parent removed it as it exited


def test_a_killed_uvicorn_worker_comes_back_with_its_index_and_only_its_series_restart(
    tmp_path: Path, short_tmpdir: Path
) -> None:
    gw, sim = start_fleet(tmp_path, server_extra='engine = "uvicorn"\nworkers = 2')
    try:
        [directory] = short_tmpdir.glob("geogate-metrics-*")
        eventually(lambda: _scrape(gw)[("geogate_workers_scraped", ())] == 2, what="both")
        started = time.monotonic()  # both workers serve: forked before this
        _serve(gw, 16)
        before = _scrape(gw)
        totals = _per_worker(before, "geogate_requests_total")
        assert set(totals) == {"0", "1"} and all(totals.values()), totals
        pids = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True)
        victim = int(pids.stdout.split()[0])
        # Past WORKER_START_GRACE_S: a worker dying sooner stops the gateway instead.
        time.sleep(max(0.0, d.WORKER_START_GRACE_S + 0.5 - (time.monotonic() - started)))
        os.kill(victim, 9)

        attempts = "geogate_upstream_attempts_total"  # of each upstream, from 0 in each worker

        def replaced() -> bool:
            got = _scrape(gw)
            return (
                got[("geogate_workers_scraped", ())] == 2
                and 0 in _per_worker(got, attempts).values()
            )

        eventually(replaced, timeout=15, what="a worker in the killed one's place")
        after = _scrape(gw)
        assert set(_per_worker(after, attempts)) == {"0", "1"}
        [gone] = [w for w, v in _per_worker(after, attempts).items() if not v]
        # The killed one's index, its counts from 0 (a reset of its own series); the other's
        # as they were.
        assert set(_per_worker(after, "geogate_requests_total")) == {"0", "1"} - {gone}
        for (name, labels), value in after.items():
            if name.endswith(COUNTS) and ("worker", gone) not in labels:
                assert value == before[(name, labels)], (name, labels)
        assert {p.name for p in directory.glob("*.sock")} == {"0.sock", "1.sock"}
    finally:
        gw.stop()
        sim.proc.kill()


def test_one_worker_makes_no_socket_and_answers_as_before(
    tmp_path: Path, short_tmpdir: Path
) -> None:
    gw, sim = start_fleet(tmp_path)
    try:
        httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, timeout=10)
        got = _scrape(gw)
        assert got[("geogate_requests_total", (("code", "200"), ("region", "eu-central")))] == 1
        assert not [k for k in got if "worker" in dict(k[1]) or k[0] == "geogate_workers"]
        assert not list(short_tmpdir.iterdir())
    finally:
        gw.stop()
        sim.proc.kill()
