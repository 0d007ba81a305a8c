"""Starting servers on picked ports: a port taken between the pick and the child's bind costs
a retry on a fresh port, not the run; the picker never hands out a port twice."""

from __future__ import annotations

import itertools
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli import procs
from gateway.cli.procs import (
    ADDRESS_IN_USE,
    START_TRIES,
    PortPicker,
    Started,
    free_port,
    geogate_cmd,
    spawn_server,
    start_all,
    stop_all,
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port somebody else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_the_picker_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([5000, 5000, 5001, 5000, 5001, 5002])
    monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": next(offered))
    pick = PortPicker()
    assert [pick(), pick(), pick()] == [5000, 5001, 5002]


def _sim_starter(tmp: Path, ports: Iterator[int], tries: list[int]) -> Callable[[], Started]:
    def start() -> Started:
        port = next(ports)
        tries.append(port)
        cmd = geogate_cmd("sim-backend", "--port", str(port), "--region", "eu-central")
        return spawn_server(cmd, tmp / "sim.log", f"http://127.0.0.1:{port}/health")

    return start


def test_a_server_whose_port_was_taken_starts_again_on_a_fresh_one(
    tmp_path: Path, taken: int
) -> None:
    tries: list[int] = []
    ports = itertools.chain([taken], iter(free_port, 0))
    live = start_all({"sim": _sim_starter(tmp_path, ports, tries)})
    try:
        assert len(tries) == 2 and tries[0] == taken and tries[1] != taken
        with urllib.request.urlopen(f"http://127.0.0.1:{tries[1]}/health", timeout=5) as r:
            assert r.read() == b"ok"
        assert ADDRESS_IN_USE in (tmp_path / "sim.log").read_text().lower()  # the first try's
    finally:
        stop_all([s.proc for s in live.values()])


def _binder(tmp: Path, port: int, tries: list[int]) -> Callable[[], Started]:
    """A child that dies the way a server does when its port is taken: bind fails."""

    def start() -> Started:
        tries.append(port)
        code = f"import socket; socket.socket().bind(('127.0.0.1', {port}))"
        return spawn_server([sys.executable, "-c", code], tmp / "b.log", f"http://127.0.0.1:{port}")

    return start


def test_it_gives_up_after_start_tries_taken_ports(tmp_path: Path, taken: int) -> None:
    tries: list[int] = []
    with pytest.raises(RuntimeError, match=f"b: {ADDRESS_IN_USE} on {START_TRIES} fresh ports"):
        start_all({"b": _binder(tmp_path, taken, tries)}, timeout=10)
    assert len(tries) == START_TRIES


def test_a_server_that_fails_for_another_reason_is_not_started_again(tmp_path: Path) -> None:
    tries: list[int] = []

    def start() -> Started:
        tries.append(0)
        cmd = geogate_cmd("sim-backend", "--port", "not-a-port")
        return spawn_server(cmd, tmp_path / "bad.log", "http://127.0.0.1:9/health")

    with pytest.raises(RuntimeError, match=r"^bad exited at start; see .*bad\.log$"):
        start_all({"bad": start}, timeout=10)
    assert tries == [0]
