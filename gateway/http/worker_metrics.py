"""The whole gateway's ``/metrics``, whichever of its workers answers the scrape.

With ``server.workers`` > 1 the kernel hands each connection to the ops listener to any
worker, and each keeps its own registry (``gateway.metrics``): scrapes that land on different
workers would see counters jump between their values. So the parent makes a private directory
(``runtime_dir``: mode 0700, removed when it exits) and names it to the workers; each worker
serves its own families on a Unix socket there, named by its index (``WorkerMetrics``), and
the ``/metrics`` of whichever worker is asked reads every other socket there and answers with
all of them, each worker's series labelled with its index (``gateway.http.metrics_merge``),
and how many workers it has.

A worker's index is the same across its restarts, so that a restarted worker's counters are
a reset of its own series, not new ones: under uvicorn the index ``gateway.server.Forked``
forks it with (ENV_WORKER), under granian, which keeps its own to itself, the lowest that no
live worker holds (``claim``).

Not the parent collecting: it serves no HTTP (under granian it is granian's own), and the ops
listener's other endpoints need a worker's Runtime anyway. Not prometheus_client's
multiprocess mode: it covers its own Counter and Gauge, not the request path's collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.metrics_merge import Part, merge, part
from gateway.runtime import Runtime, log
from gateway.watch import ejections

# The directory, from the parent to its workers (no GEOGATE_ prefix: those are config overrides).
ENV_METRICS_DIR = "_GEOGATE_METRICS_DIR"
# A worker's index, from gateway.server.Forked to the worker it forks.
ENV_WORKER = "_GEOGATE_WORKER"
# A worker's event loop answers within milliseconds unless something blocks it; a sibling
# slower than this is left out, well inside Prometheus' default scrape_timeout of 10 s.
SIBLING_TIMEOUT_S = 2.0
# Ends a worker's answer: one cut short (its worker exiting) is left out.
END = b"\n# EOF\n"


@contextlib.contextmanager
def runtime_dir(workers: int) -> Iterator[Path | None]:
    """In the parent, around its workers' lives: the directory of their sockets, named in
    ENV_METRICS_DIR, or none for one worker (whose /metrics is the gateway's already)."""
    os.environ.pop(ENV_WORKER, None)  # not one inherited: each worker is given or claims its own
    if workers <= 1:
        os.environ.pop(ENV_METRICS_DIR, None)  # not one inherited from whoever started us
        yield None
        return
    # mkdtemp's mode is 0700: only this user reads the workers' numbers, as the ops listener's
    # token or loopback address would otherwise decide.
    path = Path(tempfile.mkdtemp(prefix="geogate-metrics-"))
    os.environ[ENV_METRICS_DIR] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV_METRICS_DIR, None)
        shutil.rmtree(path, ignore_errors=True)


def forget(index: int) -> None:
    """In the parent: worker ``index`` is not replaced (its replacement could not start, and
    the others serve on). Its socket goes, else every scrape after tried it and logged that it
    did not answer, and counted it among the workers."""
    directory = os.environ.get(ENV_METRICS_DIR)
    if directory:
        with contextlib.suppress(FileNotFoundError):
            (Path(directory) / f"{index}.sock").unlink()


def claim(directory: Path) -> tuple[int, int]:
    """The lowest worker index that no live process holds, and the descriptor that holds it:
    an exclusive flock on ``<index>.lock``, which the kernel lets go of when this process ends
    however it ends, so a worker started in place of one that died gets the dead one's. (While
    granian reloads, a new worker starts before the old one of its place stops: it gets an
    index of its own, ``workers`` at most.)"""
    index = 0
    while True:
        fd = os.open(directory / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            index += 1
            continue
        return index, fd


def refresh(rt: Runtime) -> None:
    """The gauges brought up to date before a scrape: a worker's own (``Endpoints.metrics``)
    and each worker's part of the gateway's (``WorkerMetrics``)."""
    m, store = rt.metrics, rt.store
    stale = store.stale_since
    m.state_stale.set(0 if stale is None else time.time() - stale)
    m.config_version.set(store.version)
    m.config_refused.set(0 if store.refused is None else 1)
    ejections.reconcile_gauges(rt, time.monotonic())  # no series of upstreams gone
    in_flight = store.in_flight()
    for u in store.upstreams():
        m.in_flight.labels(u.id, u.region).set(in_flight.get(u.id, 0))


class WorkerMetrics:
    """This worker's families on its socket for its siblings, and the gateway's ``/metrics``.
    ``worker``: its label value, and its socket's name; ``lock``: the descriptor of its
    ``claim``, given back as it stops."""

    def __init__(
        self,
        rt: Runtime,
        directory: Path,
        worker: str,
        timeout_s: float = SIBLING_TIMEOUT_S,
        lock: int | None = None,
    ) -> None:
        self.rt = rt
        self.directory = directory
        self.worker = worker
        self.path = directory / f"{worker}.sock"
        self.timeout_s = timeout_s
        self._lock = lock
        self._server: asyncio.Server | None = None

    @classmethod
    def from_env(cls, rt: Runtime) -> WorkerMetrics | None:
        directory = os.environ.get(ENV_METRICS_DIR)
        if not directory:
            return None
        given = os.environ.get(ENV_WORKER)
        if given is not None:  # forked by gateway.server.Forked
            return cls(rt, Path(directory), given)
        index, lock = claim(Path(directory))
        return cls(rt, Path(directory), str(index), lock=lock)

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # an earlier worker's of the same index, killed
        try:
            self._server = await asyncio.start_unix_server(self._answer, path=self.path)
        except OSError as exc:  # e.g. a TMPDIR so long that the path passes AF_UNIX's 108 bytes
            log.error(
                "/metrics: cannot serve this worker's numbers to the others at %s (%s): "
                "scrapes another worker answers leave them out",
                self.path,
                exc,
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.path.unlink(missing_ok=True)
            self._server = None
        if self._lock is not None:  # after the socket is gone: the index's next holder binds it
            os.close(self._lock)
            self._lock = None

    def own(self) -> Part:
        """This worker's families, its gauges brought up to date as its /metrics does."""
        refresh(self.rt)
        return part(self.rt.metrics.registry.collect(), self.worker)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.own()).encode() + END)
            await writer.drain()
        except ConnectionError:
            pass  # the asker gave up (its timeout): nothing to tell anyone
        finally:
            writer.close()

    async def metrics(self, request: Request) -> Response:
        own = self.own()
        siblings = sorted(p for p in self.directory.glob("*.sock") if p != self.path)
        answers = await asyncio.gather(*(self._fetch(p) for p in siblings))
        parts = [own, *(a for a in answers if a is not None)]
        extra = [
            GaugeMetricFamily(
                "geogate_workers",
                "Worker processes of this gateway (server.workers)",
                value=self.rt.config.server.workers,
            ),
            GaugeMetricFamily(
                "geogate_workers_scraped",
                "Workers whose series (label worker) this scrape has; below geogate_workers "
                "while one restarts or did not answer in time, and its series are missing",
                value=len(parts),
            ),
        ]
        # No parsing: the siblings rendered their own lines; this is concatenation.
        return Response(merge(parts, extra), media_type=CONTENT_TYPE_LATEST)

    async def _fetch(self, path: Path) -> Part | None:
        """A sibling's families, or None (logged) when it does not give all of them in time."""
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    got = await reader.read()
                finally:
                    writer.close()
        except FileNotFoundError:
            return None  # removed since the listing: its worker stopped
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ConnectionRefusedError) and _gone(path):
                log.warning("/metrics: removed %s, a worker's that is gone", path.name)
                return None
            log.warning(
                "/metrics: worker %s did not answer (%r): its numbers are left out of this scrape",
                path.stem,
                exc,
            )
            return None
        if not got.endswith(END):
            log.warning("/metrics: worker %s's answer was cut short: left out", path.stem)
            return None
        try:
            answer = json.loads(got[: -len(END)])
        except ValueError as exc:
            log.warning("/metrics: worker %s's answer unreadable (%s): left out", path.stem, exc)
            return None
        return answer if isinstance(answer, dict) else None


def _gone(path: Path) -> bool:
    """Whether the socket ``path``, where nobody listens, is a dead worker's, and if so
    removed: else it would be tried, and warned of, in every scrape after. Under granian, only
    when no live worker holds its index (``claim``), and removed under that lock, so that a
    worker claiming the index meanwhile cannot have its new socket removed. Under Forked (no
    lock files) never: the dead worker's replacement, forked at once, takes its index and
    replaces the socket itself."""
    try:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live worker's, not listening yet
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)  # the lock with it
