"""Starting servers on picked ports: a port taken between the pick and the child's bind costs
a retry on a fresh port, not the run; the picker never hands out a port twice. A child that
will not start is one line naming its log and the log's last line; children die with their
parent, and SIGTERM and SIGHUP interrupt the parent as Ctrl-C does."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli import procs
from gateway.cli.errors import CLIError
from gateway.cli.procs import (
    ADDRESS_IN_USE,
    START_TRIES,
    PortPicker,
    Started,
    Terminated,
    free_port,
    geogate_cmd,
    interruptible,
    spawn_server,
    start_all,
    stop_all,
    uninterrupted,
    wait_http,
)
from tests.support import alive


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

    with pytest.raises(RuntimeError, match=r"^bad exited at start with status 2; see .*bad\.log"):
        start_all({"bad": start}, timeout=10)
    assert tries == [0]


def test_a_child_that_exits_at_start_is_one_line_with_its_last_words(tmp_path: Path) -> None:
    log = tmp_path / "c.log"

    def start() -> Started:
        code = "import sys; print('starting'); sys.exit('c: cannot open model.bin: no such file')"
        return spawn_server([sys.executable, "-c", code], log, "http://127.0.0.1:9/health")

    with pytest.raises(CLIError) as info:
        start_all({"c": start}, timeout=10)
    assert str(info.value) == (
        f"c exited at start with status 1; see {log} "
        "(last line: c: cannot open model.bin: no such file)"
    )


def test_a_child_that_never_answers_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "quiet.log"
    log.write_text("")
    proc = procs.spawn([sys.executable, "-c", "import time; time.sleep(30)"], log)
    try:
        url = f"http://127.0.0.1:{free_port()}/health"
        with pytest.raises(
            CLIError, match=rf"^{url} not ready after 0.3 s \(.*\); see {log} \(empty\)$"
        ):
            wait_http(url, timeout=0.3, proc=proc, log=log)
        with pytest.raises(TimeoutError):  # as it was, for the callers that catch that
            wait_http(url, timeout=0.1, proc=proc, log=log)
    finally:
        stop_all([proc])


def _until_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_their_parent_even_on_sigkill(tmp_path: Path) -> None:
    """No ``finally:`` runs in a parent killed with SIGKILL: the kernel stops its children."""
    code = (
        "import sys, time\n"
        "from gateway.cli.procs import spawn\n"
        "print(spawn([sys.executable, '-c', 'import time; time.sleep(60)']).pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        assert _until_gone([child]) == []
    finally:
        if alive(child):  # a failed run: gone within the test's seconds, not another's pid
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_interrupt_as_ctrl_c_does(sig: signal.Signals) -> None:
    # As from a terminal: a suite run under nohup has SIGHUP ignored, which interruptible
    # keeps (the test after this one).
    inherited = signal.signal(sig, signal.SIG_DFL)
    try:
        before = signal.getsignal(sig)
        with pytest.raises(KeyboardInterrupt) as info, interruptible():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler runs at once: never reached
        assert isinstance(info.value, Terminated) and info.value.signum == sig
        assert signal.getsignal(sig) is before
    finally:
        signal.signal(sig, inherited)


def test_a_signal_ignored_on_purpose_stays_ignored() -> None:
    # nohup starts the command with SIGHUP ignored: logging out must not end a long run.
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interruptible():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_nothing_interrupts_the_stopping() -> None:
    before = signal.getsignal(signal.SIGINT)
    with uninterrupted():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            assert signal.getsignal(sig) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: nothing happens
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_free_port_lies_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port from the ephemeral range is any outgoing connection's to take before its server
    binds it: a gateway of the edge test failed to start on one ("address already in use")."""
    low = procs._ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(procs.FREE_PORT_LOW <= p < low for p in ports), (ports, low)
    assert len(ports) > 1  # random: processes picking at once rarely meet
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free indeed
    # No room below the range: the kernel's choice, as before
    monkeypatch.setattr(procs, "_ephemeral_low", lambda: procs.FREE_PORT_LOW + 10)
    assert free_port() >= procs.FREE_PORT_LOW + 10
