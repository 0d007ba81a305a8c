"""Start and stop geogate processes (sim backends, gateways) for the demo, tests and benches."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geodb.regions import known_region

READY_TIMEOUT_S = 30.0  # a cold start imports aiohttp, starlette, granian: seconds, not more
# A child that exits at start with this in its output lost its port to another process
# between free_port() and its bind: started again on a fresh port, up to START_TRIES times
ADDRESS_IN_USE = "address already in use"  # strerror(EADDRINUSE), as every server words it
START_TRIES = 5


def route_field(header: str, key: str) -> str:
    """One field of a ``geogate-route`` header ("region" of "upstream=u1; region=r1"); "-"
    when absent."""
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == key:
            return v
    return "-"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
                wait_http(s.ready_url, timeout=timeout, proc=s.proc)
                break
            except RuntimeError:
                if not s.lost_its_port():
                    raise RuntimeError(f"{name} exited at start; see {s.log}") from None
                if attempt == START_TRIES:
                    raise RuntimeError(
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
) -> None:
    """Poll ``url`` until it answers with one of ``ok``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with status {proc.returncode}")
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
    raise TimeoutError(f"{url} not ready after {timeout:g} s ({last})")


def geogate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def spawn(args: Sequence[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if log is None:
        return subprocess.Popen(
            list(args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    # The child gets its own copy of the descriptor; ours closes when Popen returns.
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
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
