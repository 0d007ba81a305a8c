"""Start and stop geogate processes (sim backends, gateways) for the demo, tests and benches.

Children start in sessions of their own (a terminal's Ctrl-C reaches only the parent, which
stops them in order) and, on Linux, die with the parent however it dies (PR_SET_PDEATHSIG): a
parent killed with SIGKILL runs no ``finally:`` and would leave them serving. SIGTERM and SIGHUP
do run it once ``interruptible()`` turns them into KeyboardInterrupt."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.cli.errors import CLIError
from geodb.regions import known_region

READY_TIMEOUT_S = 30.0  # a cold start imports aiohttp, starlette, granian: seconds, not more
# A child that exits at start with this in its output lost its port to another process
# between free_port() and its bind: started again on a fresh port, up to START_TRIES times
ADDRESS_IN_USE = "address already in use"  # strerror(EADDRINUSE), as every server words it
START_TRIES = 5
# free_port's ports: from FREE_PORT_LOW (past the well-known and most registered services) to
# the ephemeral range's start, where at least FREE_PORT_MIN_ROOM ports lie between
FREE_PORT_LOW = 10_000
FREE_PORT_MIN_ROOM = 1_000
FREE_PORT_TRIES = 50
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
EPHEMERAL_LOW_DEFAULT = 32_768
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # kill's default; a closed terminal
LAST_LINE_CHARS = 300  # of a child's log, in an error: a server's own one-line error fits


class ExitedAtStart(CLIError, RuntimeError):
    """A child exited before it served. A RuntimeError too, as it was before it was a CLIError:
    callers (tests, benches) catch it as one."""


class NotReady(CLIError, TimeoutError):
    """A child did not answer in time. A TimeoutError too, for the same callers."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt, so the same ``finally:``
    blocks stop the children; the command then exits with 128 + ``signum``, as a shell reports
    a process that the signal ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt) until the block ends; the
    handlers there before come back after. Only the main thread may set handlers: elsewhere
    this does nothing."""
    if not _in_main_thread():
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    # A signal ignored on purpose stays ignored: under nohup, SIGHUP must not end the run.
    chosen = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
    old = {sig: signal.signal(sig, interrupt) for sig in chosen}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ignored while the block runs: the children are being stopped,
    and a second Ctrl-C there would leave those not yet stopped running."""
    if not _in_main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def log_tail(log: Path) -> str:
    """``see LOG (last line: ...)``: where a child's output went and the last thing it said,
    which is why it stopped more often than not (a server's start-up error is one line)."""
    try:
        lines = log.read_bytes().decode(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    last = lines[-1].strip()[:LAST_LINE_CHARS] if lines else ""
    return f"see {log}" + (f" (last line: {last})" if last else " (empty)")


def route_field(header: str, key: str) -> str:
    """One field of a ``geogate-route`` header ("region" of "upstream=u1; region=r1"); "-"
    when absent."""
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == key:
            return v
    return "-"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, below the kernel's ephemeral range where there is room: a
    port from that range (a bind to 0) is every outgoing connection's to take for its own end
    before the server it was meant for binds it ("address already in use" in a test run with
    thousands of connections beside it). Random, so that processes picking at once rarely
    meet; a bind to 0 where none is found."""
    low = _ephemeral_low()
    for _ in range(FREE_PORT_TRIES if low - FREE_PORT_LOW >= FREE_PORT_MIN_ROOM else 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, random.randrange(FREE_PORT_LOW, low)))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@functools.cache
def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768)."""
    try:
        return int(Path(EPHEMERAL_RANGE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW_DEFAULT


@dataclass
class PortPicker:
    """free_port() for one run of several processes, never the same port twice: a port handed
    out but not yet bound looks free to the kernel, which may offer it again."""

    host: str = "127.0.0.1"
    given: set[int] = field(default_factory=set)

    def __call__(self) -> int:
        while (port := free_port(self.host)) in self.given:
            pass
        self.given.add(port)
        return port


@dataclass
class Started:
    """One try at starting a server process whose output goes to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path
    ready_url: str  # answers 200 once the process serves
    offset: int = 0  # the log's size before this try: an earlier try's output is not ours

    def lost_its_port(self) -> bool:
        """Exited at start because its port was taken (by another process, after we picked
        it and before the child bound it)."""
        if self.proc.poll() is None:
            return False
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return ADDRESS_IN_USE in f.read().decode(errors="replace").lower()


def spawn_server(args: Sequence[str], log: Path, ready_url: str) -> Started:
    offset = log.stat().st_size if log.exists() else 0
    return Started(spawn(args, log), log, ready_url, offset)


def start_all(
    starters: dict[str, Callable[[], Started]], timeout: float = READY_TIMEOUT_S
) -> dict[str, Started]:
    """Start every server at once, then wait until each is ready; one that lost its port is
    started again by its starter, which picks fresh ports (and records them). A process that
    exits for any other reason is an error that names its log."""
    live = {name: start() for name, start in starters.items()}
    for name in live:
        for attempt in range(1, START_TRIES + 1):
            s = live[name]
            try:
                wait_http(s.ready_url, timeout=timeout, proc=s.proc, log=s.log)
                break
            except ExitedAtStart:
                if not s.lost_its_port():
                    raise ExitedAtStart(
                        f"{name} exited at start with status {s.proc.returncode}; {log_tail(s.log)}"
                    ) from None
                if attempt == START_TRIES:
                    raise ExitedAtStart(
                        f"{name}: {ADDRESS_IN_USE} on {START_TRIES} fresh ports; see {s.log}"
                    ) from None
                live[name] = starters[name]()
    return live


def wait_http(
    url: str,
    timeout: float = READY_TIMEOUT_S,
    proc: subprocess.Popen[bytes] | None = None,
    ok: Sequence[int] = (200,),
    context: ssl.SSLContext | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``url`` until it answers with one of ``ok``; fail early if ``proc`` died. The
    errors are one line, naming ``log`` and its last line when given."""
    deadline = time.monotonic() + timeout
    last = "no answer"

    def see() -> str:
        return "" if log is None else f"; {log_tail(log)}"

    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExitedAtStart(f"process for {url} exited with status {proc.returncode}{see()}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if resp.status in ok:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise NotReady(f"{url} not ready after {timeout:g} s ({last}){see()}")


def wait_json(
    url: str,
    done: Callable[[Any], bool],
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Poll ``url`` until ``done`` likes its JSON (``what`` it is waited for); one line naming
    ``log`` if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ExitedAtStart(
                f"process for {url} exited with status {proc.returncode}; {log_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if done(json.loads(r.read())):
                    return
        except (OSError, ValueError):  # not listening yet, or dying: the next round says which
            pass
        time.sleep(0.1)
    raise NotReady(f"{url}: {what} not there after {timeout:g} s; {log_tail(log)}")


def geogate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def _libc_prctl() -> Callable[..., int] | None:
    """prctl(2), looked up here: not in the forked child, where only the thread that forked
    runs and a lock another thread held (dlopen's) would never be released."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def _dies_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: SIGTERM the child when this process dies, however it dies. The signal
    comes when the *thread* that forked it ends, so only children of the main thread get it:
    one spawned from a worker thread would be stopped when that thread is done. (The gateway's
    engines.term_with_parent does the same for its workers; it is not imported from there as
    it loads libc in the child, and as gateway.engines pulls in the HTTP app.)"""
    prctl = _PRCTL
    if prctl is None or not _in_main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the request took effect
            os._exit(1)

    return preexec


def spawn(args: Sequence[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The child gets its own copy of the descriptor; ours closes when Popen returns.
    with contextlib.ExitStack() as stack:
        out = subprocess.DEVNULL if log is None else stack.enter_context(open(log, "ab"))
        return subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_dies_with_parent(),
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    stop_all([proc], timeout=timeout)


def stop_all(
    procs: Sequence[subprocess.Popen[bytes]],
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
) -> None:
    """Signal every process first, then wait: they stop together, not one after another.
    SIGTERM lets a gateway drain; SIGINT stops it at once (nobody is left to serve)."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
    deadline = time.monotonic() + timeout
    for p in running:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the whole process group: dies as a crashed server would, mid-whatever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def regions_toml(*region_ids: str) -> str:
    """``[[regions]]`` tables for a gateway config, from the package's table of known regions."""
    out = []
    for rid in region_ids:
        r = known_region(rid)
        out.append(
            f'[[regions]]\nid = "{r.id}"\nname = "{r.name}"\n'
            f"latitude = {r.latitude}\nlongitude = {r.longitude}\n"
        )
    return "\n".join(out)
