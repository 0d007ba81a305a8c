"""With server.workers > 1, one scrape of /metrics is the whole gateway's, whichever worker the
kernel hands it: each worker serves its own numbers on a Unix socket in a private directory,
and the one asked sums its siblings' with its own. Without that, Prometheus scraping a worker
at a time saw counters jump between the workers' values (increase() out of nothing, an alert
that never cleared)."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import re
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from gateway.config import Config
from gateway.http.worker_metrics import END, ENV_METRICS_DIR, WorkerMetrics, runtime_dir
from gateway.runtime import build_runtime
from tests.support import CHAT_BODY, Gateway, eventually, start_fleet

CONFIG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}],
        "server": {"workers": 3},
    }
)
SCRAPE = Request({"type": "http", "method": "GET", "path": "/metrics", "headers": []})


def _sums(text: str | bytes | memoryview) -> dict[str, float]:
    """Each sample name's total over its label sets."""
    if not isinstance(text, str):
        text = bytes(text).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@pytest.fixture
def directory() -> Iterator[Path]:
    with runtime_dir(CONFIG.server.workers) as path:
        assert path is not None
        yield path


def test_the_directory_is_private_named_to_the_workers_and_removed() -> None:
    with runtime_dir(2) as path:
        assert path is not None and os.environ[ENV_METRICS_DIR] == str(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o700  # the workers' numbers: ours alone
        (path / "1.sock").touch()  # a worker's socket, left behind
    assert not path.exists() and ENV_METRICS_DIR not in os.environ
    with runtime_dir(1) as none:  # one worker: its /metrics is the gateway's already
        assert none is None and ENV_METRICS_DIR not in os.environ


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
            got = _sums((await w.metrics(SCRAPE)).body)
            assert got["geogate_requests_total"] == 7
            assert (got["geogate_workers"], got["geogate_workers_scraped"]) == (3, 2)
    finally:
        for w in workers:
            await w.stop()
    assert not os.listdir(directory)  # each removed its socket


async def test_a_sibling_that_does_not_answer_is_left_out_not_a_failed_scrape(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = build_runtime(CONFIG)
    rt.metrics.requests.count("200", "eu")
    me = WorkerMetrics(rt, directory, "me", timeout_s=0.2)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a worker whose loop is stuck: never answers, until we hang up

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'geogate_requests_total{code="200",region="eu"} 5.0\n')  # no END: exiting
        writer.close()

    hung = await asyncio.start_unix_server(hang, path=directory / "hung.sock")
    cut = await asyncio.start_unix_server(cut_short, path=directory / "cut.sock")
    # A worker killed (SIGKILL) leaves its socket file with nobody listening on it.
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(directory / "gone.sock"))
    await me.start()
    try:
        with caplog.at_level(logging.WARNING, logger="geogate"):
            response = await me.metrics(SCRAPE)
        assert response.status_code == 200
        got = _sums(response.body)
        assert got["geogate_requests_total"] == 1  # its own: neither 0 nor the partial 5
        assert (got["geogate_workers"], got["geogate_workers_scraped"]) == (3, 1)
        assert not (directory / "gone.sock").exists()  # else missed in every scrape after
        logged = caplog.text
        assert "worker hung did not answer (TimeoutError())" in logged
        assert "worker cut's answer was cut short" in logged
        assert "removed gone.sock, a worker's that is gone" in logged
    finally:
        await me.stop()
        for server in (hung, cut):
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
    assert got.endswith(END)
    assert _sums(got[: -len(END)])["geogate_requests_total"] == 1
    assert "geogate_workers" not in got.decode()  # its own registry's, nothing merged


@pytest.fixture
def short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short TMPDIR for the gateway: where it makes its directory, for the test to look
    into, and short because a Unix socket's path must fit in 108 bytes (pytest's tmp_path
    can be longer)."""
    with tempfile.TemporaryDirectory(prefix="gg") as path:
        monkeypatch.setenv("TMPDIR", path)
        yield Path(path)


def _scrape(gw: Gateway) -> dict[str, float]:
    return _scrape_owned(gw)[0]


def _scrape_owned(gw: Gateway) -> tuple[dict[str, float], int]:
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
    return _sums(body), owner


def _worker_own(sock: Path) -> dict[str, float]:
    """One worker's own numbers, read from its socket as its siblings do."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    assert got.endswith(END)
    return _sums(got[: -len(END)])


@pytest.mark.parametrize("engine", ["uvicorn", "granian"])
def test_every_scrape_of_a_two_worker_gateway_counts_every_request(
    tmp_path: Path, short_tmpdir: Path, engine: str
) -> None:
    n, k = 24, 12
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"\nworkers = 2')
    try:
        [directory] = short_tmpdir.glob("geogate-metrics-*")
        eventually(lambda: len(list(directory.glob("*.sock"))) == 2, what="two workers' sockets")
        eventually(lambda: _scrape(gw)["geogate_workers_scraped"] == 2, what="both summed")
        for _ in range(n):  # a connection each: SO_REUSEPORT spreads them over both workers
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, timeout=10)
            assert r.status_code == 200, r.text
        # Each worker served some, so no worker's own numbers alone could total n.
        own = [_worker_own(s)["geogate_requests_total"] for s in directory.glob("*.sock")]
        assert sum(own) == n and all(0 < x < n for x in own), own
        answered: list[int] = []

        def scrape_counts_all() -> bool:
            got, owner = _scrape_owned(gw)
            assert got["geogate_requests_total"] == n, got
            assert got["geogate_request_duration_seconds_count"] == n
            assert (got["geogate_workers"], got["geogate_workers_scraped"]) == (2, 2)
            answered.append(owner)
            return len(answered) >= k and len(set(answered)) == 2

        # At least k scrapes, and on until both workers have answered some: the same n from
        # either (they take turns in practice; the deadline only bounds an unlucky run).
        eventually(scrape_counts_all, what="scrapes answered by both workers")
    finally:
        gw.stop()
        sim.proc.kill()
    assert not directory.exists()  # the parent removed it as it exited


def test_one_worker_makes_no_socket_and_answers_as_before(
    tmp_path: Path, short_tmpdir: Path
) -> None:
    gw, sim = start_fleet(tmp_path)
    try:
        httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT_BODY, timeout=10)
        got = _scrape(gw)
        assert got["geogate_requests_total"] == 1
        assert "geogate_workers_scraped" not in got
        assert not list(short_tmpdir.iterdir())
    finally:
        gw.stop()
        sim.proc.kill()
