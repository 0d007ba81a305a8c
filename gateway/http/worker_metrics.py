"""The whole gateway's ``/metrics``, whichever of its workers answers the scrape.

With ``server.workers`` > 1 the kernel hands each connection to the ops listener to any
worker, and each keeps its own registry (``gateway.metrics``): scrapes that land on different
workers would see counters jump between their values. So the parent makes a private directory
(``runtime_dir``: mode 0700, removed when it exits) and names it to the workers; each worker
serves its own exposition on a Unix socket there, named by its pid (``WorkerMetrics``), and
the ``/metrics`` of whichever worker is asked reads every other socket there and answers with
the sum (``gateway.http.metrics_merge``), and how many workers it summed.

Not the parent collecting: it serves no HTTP (under granian it is granian's own), and the ops
listener's other endpoints need a worker's Runtime anyway. Not prometheus_client's
multiprocess mode: it covers its own Counter and Gauge, not the request path's collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.endpoints import Endpoints
from gateway.http.metrics_merge import merge
from gateway.runtime import Runtime, log

# The directory, from the parent to its workers (no GEOGATE_ prefix: those are config overrides).
ENV_METRICS_DIR = "_GEOGATE_METRICS_DIR"
# A worker's event loop answers within milliseconds unless something blocks it; a sibling
# slower than this is left out, well inside Prometheus' default scrape_timeout of 10 s.
SIBLING_TIMEOUT_S = 2.0
# Ends a worker's answer: one cut short (its worker exiting) is left out rather than read as
# lower counts.
END = b"# EOF\n"
# What Endpoints.metrics is called with for a sibling: it reads nothing of the request.
_SCOPE = {"type": "http", "method": "GET", "path": "/metrics", "headers": [], "query_string": b""}


@contextlib.contextmanager
def runtime_dir(workers: int) -> Iterator[Path | None]:
    """In the parent, around its workers' lives: the directory of their sockets, named in
    ENV_METRICS_DIR, or none for one worker (whose /metrics is the gateway's already)."""
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


class WorkerMetrics:
    """This worker's numbers on its socket for its siblings, and the gateway's ``/metrics``."""

    def __init__(
        self,
        rt: Runtime,
        directory: Path,
        name: str = "",
        timeout_s: float = SIBLING_TIMEOUT_S,
    ) -> None:
        self.rt = rt
        self.directory = directory
        self.path = directory / f"{name or os.getpid()}.sock"
        self.timeout_s = timeout_s
        self._endpoints = Endpoints(rt)
        self._server: asyncio.Server | None = None

    @classmethod
    def from_env(cls, rt: Runtime) -> WorkerMetrics | None:
        directory = os.environ.get(ENV_METRICS_DIR)
        return cls(rt, Path(directory)) if directory else None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # an earlier worker's of the same pid, killed
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

    async def own(self) -> bytes:
        """This worker's exposition, its gauges brought up to date as its /metrics does."""
        response = await self._endpoints.metrics(Request(_SCOPE))
        return bytes(response.body)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self.own() + END)
            await writer.drain()
        except ConnectionError:
            pass  # the asker gave up (its timeout): nothing to tell anyone
        finally:
            writer.close()

    async def metrics(self, request: Request) -> Response:
        own = await self.own()
        siblings = sorted(p for p in self.directory.glob("*.sock") if p != self.path)
        answers = await asyncio.gather(*(self._fetch(p) for p in siblings))
        texts = [own.decode(), *(a for a in answers if a is not None)]
        extra = [
            GaugeMetricFamily(
                "geogate_workers",
                "Worker processes of this gateway (server.workers)",
                value=self.rt.config.server.workers,
            ),
            GaugeMetricFamily(
                "geogate_workers_scraped",
                "Workers whose numbers this scrape sums; below geogate_workers while one "
                "restarts or did not answer in time, and its counts are missing from it",
                value=len(texts),
            ),
        ]
        # Parsing is pure Python and grows with the series: in a thread, so that the proxied
        # requests on this worker's event loop are not held up for all of it at once.
        body = await asyncio.to_thread(merge, texts, extra)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _fetch(self, path: Path) -> str | None:
        """A sibling's exposition, or None (logged) when it does not give all of it in time."""
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    got = await reader.read()
                finally:
                    writer.close()
        except ConnectionRefusedError:
            # Nobody listens: a worker killed before it could remove its socket. Its
            # replacement has a pid and a socket of its own; this one would be missed forever.
            # (A directory entry removed: nothing that waits on a device or a peer.)
            path.unlink(missing_ok=True)  # noqa: ASYNC240
            log.warning("/metrics: removed %s, a worker's that is gone", path.name)
            return None
        except FileNotFoundError:
            return None  # removed since the listing: its worker stopped
        except (OSError, TimeoutError) as exc:
            log.warning(
                "/metrics: worker %s did not answer (%r): its numbers are left out of this scrape",
                path.stem,
                exc,
            )
            return None
        if not got.endswith(END):
            log.warning("/metrics: worker %s's answer was cut short: left out", path.stem)
            return None
        return got[: -len(END)].decode()
