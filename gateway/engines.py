"""The engines beside uvicorn (gateway.server): granian, for HTTP/2 (h2c with prior knowledge,
TLS with ALPN h2), and hypercorn, the pure-Python one. Each runs the same app, drains as
uvicorn's workers do on SIGTERM, and is given the settings of the config that it has."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import ipaddress
import logging
import math
import multiprocessing
import os
import signal
import socket
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from gateway import defaults as d
from gateway.checks import address
from gateway.config import Config
from gateway.config_file import ENV_CONFIG_FILE
from gateway.fleet.keys import ENV_GATEWAY_PID
from gateway.h1 import for_ops
from gateway.http.dispatch import headless
from gateway.http.gate import Capacity
from gateway.http.ops import ENV_OPS_FD
from gateway.runtime import log

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def term_with_parent(parent: int) -> None:
    """SIGTERM this worker when the process that forked it dies, however it dies (the OOM
    killer, kill -9): else the workers would go on serving, and holding the port, with nothing
    to stop or replace them. Linux only; elsewhere the workers outlive a killed parent. The
    signal comes when the forking *thread* ends: uvicorn's and granian's workers are both
    forked by their main process's main thread (granian respawns from its serve loop)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def granian_app() -> ASGIApp:
    """granian's factory, called in each worker process."""
    from gateway.http.app import create_app

    # granian's workers had no such tie: a worker it respawned outlived a main killed in its
    # stop, serving on the port with nothing left to stop it. Tied once the app's drain is
    # SIGTERM's handler (its lifespan), not here: a signal before that went to granian's own
    # handler, which a worker not yet serving lost, and it served on for good (1 in 8 tries).
    main = os.environ.get(ENV_GATEWAY_PID)
    tie = functools.partial(term_with_parent, int(main)) if main else None
    fd = os.environ.get(ENV_OPS_FD)
    return headless(
        create_app(
            stop=_stop_granian_worker,
            started=tie,
            ops_fd=int(fd) if fd else None,
            ops_protocol=for_ops(),
        )
    )


def _stop_granian_worker() -> None:
    """The drain is over: the worker stops."""
    main = os.environ.get(ENV_GATEWAY_PID)
    if main and os.getppid() != int(main):
        # Its main process is gone (killed; term_with_parent's signal began the drain): no
        # granian is left to stop in step with, and a worker that main had just respawned,
        # told before granian's own handler was in place, slept on forever after the SIGINT.
        logging.shutdown()
        os._exit(0)
    # granian's worker stops on SIGINT or SIGTERM; the app took SIGTERM for its drain.
    os.kill(os.getpid(), signal.SIGINT)


def ip_literal(host: str) -> str:
    """``host`` as an address: granian takes IP literals only, and a name (``localhost``),
    which the start's own bind resolved and passed (and ``--check`` with it), stopped granian
    with a traceback. Its first address in the family server.bind uses for it (IPv4 for a
    name), so granian listens where the check and the other engines would."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as server.bind chooses
        return str(socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)[0][4][0])


def one_listening_socket(base: type[Any]) -> type[Any]:
    """granian's process server with one listening socket for all its workers, bound and
    listening in this process before they start: granian's own way for a Unix socket and off
    Linux. granian 2.8 on Linux has each worker bind a socket of its own, with SO_REUSEPORT
    (granian/server/common.py _init_shared_socket; src/workers.rs tcp_listener): the kernel
    queued each new connection on one of them, those on a worker that died (an OOM kill) were
    reset with its socket, and while no worker listened (the first not yet up at the start,
    or the only one up being replaced) a connect was refused. One socket's queue outlives its
    workers: the others accept what a dead one left, and a connect waits for the first worker
    up. granian's remedy, the tcp_migrate_req sysctl, is the host's to set, and leaves the
    refusals. The cost: every worker wakes for each new connection and one accepts it, where
    the kernel's hash woke one; an inference gateway's connections are few and long-lived."""
    from granian.net import SocketSpec  # type: ignore[attr-defined]  # _granian's, renamed

    class OneSocket(base):  # type: ignore[misc]
        def _init_shared_socket(self) -> None:
            if self.bind_uds:  # one socket already
                super()._init_shared_socket()
                return
            holder = SocketSpec(self.bind_addr, self.bind_port, self.backlog).build()
            self._ssp, self._shd, self._sfd = None, holder, holder.get_fd()
            # Listening now, not at the first worker's start; closed by granian's shutdown
            # (_drop_shared_socket), the workers' copies as each of them stops.
            self._sso = socket.socket(fileno=self._sfd)
            self._sso.set_inheritable(True)  # as granian's own (fork keeps it either way)
            # Out of SO_REUSEPORT (granian's spec sets it), before it listens: no later
            # process can bind the port beside it and take a share of its connections.
            self._sso.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
            self._sso.listen(self.backlog)

    return OneSocket


def run_granian(config: Config, config_path: Path, cap: Capacity) -> None:
    from granian import server as granian_server
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings, HTTP2Settings

    s = config.server
    # Workers are separate processes: they load the same file, overrides included.
    os.environ[ENV_CONFIG_FILE] = str(config_path.resolve())
    # Workers as processes (MPServer: granian on a GIL build) share one listening socket;
    # threads (MTServer, free-threaded) are one process, which a worker's death ends anyway.
    # It overrides granian 2.8's private _init_shared_socket (pyproject pins granian < 2.9). A
    # worker uses the holder's descriptor number as it is: the same socket only in a forked
    # child (under Python 3.14's default start method, spawn in granian, it would not be).
    Server = granian_server.Server
    if Server is granian_server.MPServer:
        method = multiprocessing.get_start_method()
        if method == "fork":
            Server = one_listening_socket(Server)
        else:
            log.warning(
                "granian workers started by %r, not fork: each gets a socket of its own, and a "
                "worker that dies resets the connections queued on it",
                method,
            )
    server = Server(
        "gateway.engines:granian_app",
        address=ip_literal(s.host),
        port=s.port,
        interface=Interfaces.ASGI,
        workers=s.workers,
        loop=Loops.uvloop,
        http=HTTPModes.auto,  # HTTP/1.1, h2c prior knowledge, and ALPN on TLS
        factory=True,
        ssl_cert=s.tls_cert,
        ssl_key=s.tls_key,
        # TLS 1.2 and up, as on uvicorn and hypercorn: granian's own floor is 1.3, which
        # refused every TLS 1.2 client or proxy.
        ssl_protocol_min=SSLProtocols.tls12,
        # A worker that dies (an OOM kill) is replaced, as uvicorn's are: granian's default
        # stopped the whole gateway, the other workers' streams and ports with it.
        respawn_failed_workers=True,
        # The workers drain for up to drain_timeout_s themselves; this is the backstop.
        workers_kill_timeout=math.ceil(s.drain_timeout_s + d.WORKER_EXIT_GRACE_S),
        log_access=False,  # the app writes its own access line, with request id and route
        backlog=s.backlog,
        # Connections a worker holds open; granian's default (backlog / workers) capped a
        # worker at 2,048 streams and queued the rest unseen in the accept queue.
        backpressure=cap.connections,
        # HTTP/1.1's head buffer at twice the cap too (granian's own: about 400 KiB).
        http1_settings=HTTP1Settings(max_buffer_size=max(8192, 2 * s.max_header_bytes)),
        http2_settings=HTTP2Settings(
            max_concurrent_streams=s.h2_max_concurrent_streams,
            # Headers past twice server.max_header_bytes are refused by granian before they
            # are held (its default: 16 MiB a request); the app answers 431 in JSON over
            # the limit itself (HPACK counts 32 bytes a field more than the app does).
            max_headers_size=2 * s.max_header_bytes,
        ),
    )
    server.serve()


def run_hypercorn(config: Config, ops: socket.socket | None) -> None:
    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HConfig

    from gateway.http.app import create_app

    s = config.server
    hc = HConfig()
    hc.bind = [address(s.host, s.port)]
    hc.graceful_timeout = d.WORKER_EXIT_GRACE_S  # after the app's own drain (http.gate)
    hc.accesslog = None
    hc.backlog = s.backlog
    hc.h2_max_concurrent_streams = s.h2_max_concurrent_streams
    # Not closed after 1000 requests (hypercorn's default): an edge tier's h2 connection stays.
    hc.keep_alive_max_requests = 2**31
    # An idle connection kept as server.keepalive_s says (hypercorn's own default is 5 s: a
    # load balancer's pooled connection closed under it, and on h2 with no GOAWAY).
    hc.keep_alive_timeout = s.keepalive_s
    if s.tls_cert and s.tls_key:
        hc.certfile, hc.keyfile = str(s.tls_cert), str(s.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]

    async def main() -> None:
        stop = asyncio.Event()
        app = create_app(
            config, stop=stop.set, ops_fd=ops.fileno() if ops else None, ops_protocol=for_ops()
        )
        loop = asyncio.get_running_loop()
        # Until the app's lifespan takes SIGTERM over (to drain first), both stop at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    uvloop.run(main())
