"""The ops listener: ``/metrics``, ``/routing-table``, ``/explain``, ``/admin/*`` and the live
``/dashboard`` on a host and port of their own (``[ops]``, loopback by default), never on the
public port.

``ops.token`` (``Authorization: Bearer <token>``) guards everything but ``/admin/*`` and
``/dashboard``, which have their operators' own tokens: with it set, another host (the edge
tier reading the routing table, a Prometheus scraping metrics) may be let in. The listener is
hypercorn on the worker's own event loop, so it reads the very Runtime the proxy writes; its
socket is bound once by the parent process (``gateway.server``), which hands its descriptor
to each worker (``shared``). With several workers, whichever one the kernel hands a scrape
answers ``/metrics`` with every worker's series, each labelled with its worker
(``gateway.http.worker_metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from gateway import defaults as d
from gateway.errors import OpsUnauthorized
from gateway.http.admin import admin_routes
from gateway.http.asgi import Receive, Scope, Send, header
from gateway.http.auth_throttle import AuthThrottle
from gateway.http.dashboard.routes import Dashboard
from gateway.http.endpoints import Endpoints, ops_not_found
from gateway.http.errors import http_exception, send_error
from gateway.http.worker_metrics import WorkerMetrics, runtime_dir
from gateway.runtime import Runtime, log

# The inherited listening socket's descriptor, from the parent to its workers (the name has
# no GEOGATE_ prefix: those are config overrides).
ENV_OPS_FD = "_GEOGATE_OPS_FD"
STOP_TIMEOUT_S = 2.0  # a scrape in progress finishes; an idle keep-alive connection does not wait
# hypercorn's own lines ("Running on ... CTRL + C to quit") would mislead: warnings only.
_server_log = logging.getLogger("geogate.ops.server")
_server_log.setLevel(logging.WARNING)


class OpsAuth:
    """``ops.token`` in front of the ops app, for all but ``/admin/*`` and ``/dashboard``,
    which log their operators in with their own tokens."""

    def __init__(self, app: Starlette, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _own_login(scope["path"]):
            # The scheme in any case, as RFC 9110 has it ("bearer" was refused).
            scheme, _, sent = (header(scope, b"authorization") or "").partition(" ")
            ok = scheme.lower() == "bearer"
            if not hmac.compare_digest(sent.strip().encode("latin-1"), self.expected) or not ok:
                err = OpsUnauthorized(
                    "missing or wrong ops token: send Authorization: Bearer <ops.token>"
                )
                await send_error(send, err, [(b"www-authenticate", b'Bearer realm="geogate-ops"')])
                return
        await self.app(scope, receive, send)


def _own_login(path: str) -> bool:
    return path.startswith(("/admin/", "/dashboard/")) or path == "/dashboard"


@contextlib.contextmanager
def shared(ops: socket.socket | None, workers: int) -> Iterator[None]:
    """In the parent, around its workers' lives: the ops listener's socket listening, its
    descriptor named for the workers to inherit (fork), and with several workers the directory
    where each serves its numbers to the others (``worker_metrics.runtime_dir``)."""
    if ops is None:  # ops.port = 0: no listener, no /metrics to merge
        yield
        return
    ops.listen(d.BACKLOG)
    os.environ[ENV_OPS_FD] = str(ops.fileno())
    with runtime_dir(workers):
        yield


def ops_app(rt: Runtime, workers: WorkerMetrics | None = None) -> AuthThrottle:
    """``workers``: this worker's part in a gateway of several; its /metrics, all the workers'
    series, comes before the one worker's of ``Endpoints`` (the first route matching wins)."""
    dashboard = Dashboard(rt)
    merged = [Route("/metrics", workers.metrics)] if workers is not None else []
    app = Starlette(
        routes=[*merged, *Endpoints(rt).ops_routes(), *admin_routes(rt), *dashboard.routes()],
        lifespan=dashboard.lifespan,
        exception_handlers={HTTPException: http_exception},  # a wrong method: JSON, with Allow
    )
    app.router.default = ops_not_found
    app.router.redirect_slashes = False  # as the public app's (gateway.http.app)
    token = rt.config.ops.token
    return AuthThrottle(OpsAuth(app, token) if token else app)


class OpsListener:
    """Serves ``ops_app`` on an inherited listening socket, from the lifespan of the worker."""

    def __init__(self, rt: Runtime, fd: int) -> None:
        self.rt = rt
        self.fd = fd
        self.workers = WorkerMetrics.from_env(rt)  # None with one worker: no socket made
        rt.worker = self.workers.worker if self.workers is not None else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config as HConfig

        try:
            # The same descriptor in every worker: the kernel spreads connections among them.
            socket.socket(fileno=self.fd).detach()
        except OSError as exc:
            log.error(
                "ops listener off: descriptor %d from the parent is unusable (%s)", self.fd, exc
            )
            return
        hc = HConfig()
        hc.bind = [f"fd://{self.fd}"]
        hc.accesslog = None
        hc.errorlog = _server_log
        hc.graceful_timeout = STOP_TIMEOUT_S
        if self.workers is not None:
            await self.workers.start()
        app = ops_app(self.rt, self.workers)
        # shutdown_trigger given: hypercorn installs no signal handlers of its own.
        self._task = asyncio.get_running_loop().create_task(
            serve(app, hc, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )

    async def stop(self) -> None:
        if self._task is None:
            return
        if self.workers is not None:  # its siblings' scrapes leave it out from now on
            await self.workers.stop()
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, STOP_TIMEOUT_S * 2)
        except Exception as exc:  # stopping anyway: say so, do not fail the shutdown
            log.warning("ops listener stopped uncleanly: %r", exc)
