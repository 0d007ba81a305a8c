"""The ops listener: ``/metrics``, ``/routing-table``, ``/explain``, ``/admin/*`` and the live
``/dashboard`` on a host and port of their own (``[ops]``, loopback by default), never on the
public port.

``ops.token`` (``Authorization: Bearer <token>``) guards everything but ``/admin/*`` and
``/dashboard``, which have their operators' own tokens: with it set, another host (the edge
tier reading the routing table, a Prometheus scraping metrics) may be let in. The listener is
gateway.h1, the public listener's HTTP/1.1, on the worker's own event loop, so it reads the
very Runtime the proxy writes. It was hypercorn, whose HTTP/2 (prior knowledge, on any plain
connection) turned a client opening and resetting streams in a loop into seconds of CPU a
second, slowing the public API on the same loop (a security review's run: /healthz p50 0.5 s);
the ops listener needs no HTTP/2. Its socket is bound once by the parent process
(``gateway.server``), which hands its descriptor to each worker (``shared``). With several
workers, whichever one the kernel hands a scrape answers ``/metrics`` with every worker's
series, each labelled with its worker (``gateway.http.worker_metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import ClassVar
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from uvicorn.server import ServerState

from gateway import defaults as d
from gateway.errors import OpsHostRefused, OpsUnauthorized
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


class HostGuard:
    """An ops listener without ``ops.token`` answers only requests that name it by an address,
    by localhost, by ``ops.public_url``'s host or by one of ``ops.hosts``.

    Why: such a listener trusts whoever can connect, and an operator's browser is one of them
    (on this machine, or through a port published on its loopback, as deploy/docker's compose
    file does). A web page whose name its owner re-points at the listener's address after the
    page loaded (DNS rebinding) becomes same-origin with the listener, and its script could
    read /metrics, /routing-table and /explain. Its requests carry that name in Host, which no
    request meant for this listener does; an address cannot be re-pointed, and browsers
    resolve localhost and *.localhost themselves. A request without Host (HTTP/1.0) comes from
    no browser and passes."""

    def __init__(self, app: Starlette, public_url: str, hosts: tuple[str, ...]) -> None:
        self.app = app
        # ops.hosts come lower case with no final dot (checks.host_name); hostname is lower.
        named = (urlsplit(public_url).hostname or "").rstrip(".") if public_url else ""
        self.named = frozenset([*hosts, named] if named else hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            sent = header(scope, b"host")
            if sent is not None and not self.allowed(sent):
                err = OpsHostRefused(
                    f"this ops listener answers requests for its address or localhost, not "
                    f"{sent[:100]!r}: use http://127.0.0.1:<ops.port>, or list the name in "
                    "ops.hosts (or ops.public_url, a proxy's), or set ops.token"
                )
                await send_error(send, err)
                return
        await self.app(scope, receive, send)

    def allowed(self, host: str) -> bool:
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:  # "[::1" and the like: no authority at all
            return False
        name = name.rstrip(".")
        if name == "localhost" or name.endswith(".localhost") or name in self.named:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


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


def ops_app(
    rt: Runtime, workers: WorkerMetrics | None = None, dashboard: Dashboard | None = None
) -> AuthThrottle:
    """``workers``: this worker's part in a gateway of several; its /metrics, all the workers'
    series, comes before the one worker's of ``Endpoints`` (the first route matching wins).
    ``dashboard``: one whose lifespan the caller runs (OpsListener); else the app's own
    lifespan runs it (an ASGI server's, a test client's)."""
    dashboard = dashboard or Dashboard(rt)
    merged = [Route("/metrics", workers.metrics)] if workers is not None else []
    app = Starlette(
        routes=[*merged, *Endpoints(rt).ops_routes(), *admin_routes(rt), *dashboard.routes()],
        lifespan=dashboard.lifespan,
        exception_handlers={HTTPException: http_exception},  # a wrong method: JSON, with Allow
    )
    app.router.default = ops_not_found
    app.router.redirect_slashes = False  # as the public app's (gateway.http.app)
    ops = rt.config.ops
    if ops.token:
        return AuthThrottle(OpsAuth(app, ops.token))
    return AuthThrottle(HostGuard(app, ops.public_url, ops.hosts))


class _OpsState(ServerState):
    """uvicorn's ServerState for gateway.h1, with the Date header (RFC 9110 6.6.1: an origin
    server with a clock sends one) that uvicorn's main loop keeps for the public listener,
    made here at most once a second, as it is read."""

    _at = -1
    _date: ClassVar[list[tuple[bytes, bytes]]] = []

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if now != _OpsState._at:
            _OpsState._at = now
            _OpsState._date = [(b"date", formatdate(now, usegmt=True).encode())]
        return _OpsState._date

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        pass  # ServerState's own (an empty list) is not kept: the property is the list


class _Served:
    """What gateway.h1's protocol reads of uvicorn's Config, for the ops app."""

    loaded = True
    root_path = ""
    timeout_keep_alive = d.SERVER_KEEPALIVE_S
    # A bound on the ops listener's connections, past which idle ones make room
    # (gateway.h1.reclaim): hypercorn had none, and one client's sockets could take the
    # descriptors the public listener's streams need.
    limit_concurrency = d.OPS_MAX_CONNECTIONS

    def __init__(self, app: AuthThrottle) -> None:
        self.loaded_app = app

    def load(self) -> None:  # loaded already
        pass


class OpsListener:
    """Serves ``ops_app`` on an inherited listening socket, from the lifespan of the worker."""

    def __init__(self, rt: Runtime, fd: int, protocol: Callable[..., asyncio.Protocol]) -> None:
        """``protocol``: gateway.h1's protocol class for this listener (``gateway.h1.for_ops``),
        given by the server layer, as gateway.h1 sits above this one."""
        self.rt = rt
        self.fd = fd
        self.protocol = protocol
        self.workers = WorkerMetrics.from_env(rt)  # None with one worker: no socket made
        rt.worker = self.workers.worker if self.workers is not None else None
        self._server: asyncio.Server | None = None
        self._state = _OpsState()  # what gateway.h1 keeps of its connections, as uvicorn's
        self._exit = contextlib.AsyncExitStack()

    async def start(self) -> None:
        try:
            # The same descriptor in every worker: the kernel spreads connections among them.
            # A duplicate: closing the server closes it, not the one the parent handed down.
            sock = socket.socket(fileno=os.dup(self.fd))
        except OSError as exc:
            log.error(
                "ops listener off: descriptor %d from the parent is unusable (%s)", self.fd, exc
            )
            return
        if self.workers is not None:
            await self.workers.start()
        dashboard = Dashboard(self.rt)
        await self._exit.enter_async_context(dashboard.lifespan(None))  # the sampler
        app = ops_app(self.rt, self.workers, dashboard)
        protocol, config = self.protocol, _Served(app)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: protocol(config, self._state, {}, loop), sock=sock
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self.workers is not None:  # its siblings' scrapes leave it out from now on
            await self.workers.stop()
        server.close()  # no new connection
        for conn in list(self._state.connections):
            conn.shutdown()  # idle ones close now, busy ones after their answer
        running = list(self._state.tasks)
        if running:
            await asyncio.wait(running, timeout=STOP_TIMEOUT_S)
        # What still runs (a dashboard page's live stream) is cut: its task sees the client go.
        for conn in list(self._state.connections):
            conn.transport.abort()
        left = [t for t in running if not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=STOP_TIMEOUT_S)
        await self._exit.aclose()  # the dashboard's sampler
