"""Run the app on an ASGI server, all on uvloop: uvicorn (default), granian or hypercorn.

uvicorn was chosen by measurement (bench/overhead.py, docs/performance.md): with httptools its
HTTP/1.1 runs on the worker's event loop thread, and costs less CPU per request and per stream
than granian, whose Rust HTTP stack hands every request and write over between threads.
granian stays for HTTP/2 (h2c with prior knowledge, TLS with ALPN h2); hypercorn as the pure-
Python engine. All behave alike on SIGTERM: each worker drains (``gateway.http.gate``: /readyz
answers 503 while the requests in flight finish, up to server.drain_timeout_s), then its server
stops.

Before any starts, this process checks that the public address is free (the workers bind with
SO_REUSEPORT: a second gateway on a taken port would share its traffic), binds the ops socket
for the workers, and raises its descriptor limit. Its pid names it to the fleet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import checks, engines
from gateway import defaults as d
from gateway.config import Config
from gateway.engines import term_with_parent
from gateway.errors import CannotListen, ConfigError, GatewayError, PortInUse
from gateway.fleet import last_known
from gateway.fleet.keys import ENV_GATEWAY_PID
from gateway.http.gate import Capacity, capacity, fd_limit
from gateway.http.ops import shared
from gateway.http.worker_metrics import ENV_WORKER, forget
from gateway.runtime import log

Listeners = Sequence[socket.socket]  # Forked's: worker i's own listening socket at i


def run_uvicorn(config: Config, ops: socket.socket | None, cap: Capacity) -> None:
    """uvicorn (httptools on uvloop): HTTP/1.1 and TLS, no HTTP/2. Its HTTP runs on the worker's
    event loop thread, so a proxied request or chunk costs no hand-over to another thread, as
    granian's Rust runtime does: the cheaper engine for HTTP/1.1 (bench/results/overhead.md).
    Workers are forked from this process (``Forked``)."""
    s = config.server
    if s.workers == 1:
        sock = bind(s.host, s.port, "server.port")
        sock.listen(s.backlog)
        _log_public(config, sock.getsockname()[1])
        _serve_uvicorn(config, sock, ops, cap)
        return
    # A listening socket per worker, all on the port with SO_REUSEPORT: the kernel spreads new
    # connections across them, where workers sharing one socket would all wake for each one
    # and the least busy would not be the one that takes it. This process keeps them open, so
    # connections queued for a worker that died wait for its replacement (Forked's socks).
    socks = [bind(s.host, s.port, "server.port", reuse_port=True)]
    port = socks[0].getsockname()[1]  # server.port 0: the others join the port the first got
    socks += [bind(s.host, port, "server.port", reuse_port=True) for _ in range(1, s.workers)]
    for sock in socks:
        sock.listen(s.backlog)
    _log_public(config, port)
    kill_s = s.drain_timeout_s + d.WORKER_EXIT_GRACE_S  # granian's backstop, too
    Forked(s.workers, lambda i: _serve_uvicorn(config, socks[i], ops, cap), kill_s, socks).run()


def _serve_uvicorn(
    config: Config, sock: socket.socket, ops: socket.socket | None, cap: Capacity
) -> None:
    import uvicorn

    from gateway.h1 import capped, for_ops
    from gateway.h1.server import Server
    from gateway.http.app import create_app

    s = config.server
    server: Server | None = None
    if s.tls_cert and s.tls_key and (unusable := checks.tls_problem(s.tls_cert, s.tls_key)):
        # Read again by each worker: a replacement's may have changed since the start's check
        raise ConfigError(f"server.{unusable[0]}: {unusable[1]}")

    def stop() -> None:  # the app's drain is done (gateway.http.gate)
        assert server is not None
        server.should_exit = True

    app = create_app(
        config, stop=stop, ops_fd=ops.fileno() if ops else None, ops_protocol=for_ops()
    )
    server = Server(  # uvicorn's, its main loop waking once a second (gateway.h1.server)
        uvicorn.Config(
            app,
            loop="uvloop",
            # httptools (the C parser, as production uvicorn runs), the head capped (gateway.h1)
            http=capped(s.max_header_bytes, d.MAX_URL_BYTES, s.head_timeout_s, s.max_body_bytes),
            lifespan="on",
            access_log=False,  # the app writes its own access line, with request id and route
            log_config=None,  # the gateway's own logging set-up stays
            # The gateway reads X-Forwarded-For itself, from gateway.trusted_proxies only;
            # uvicorn's middleware would trust it from 127.0.0.1 and rewrite the client.
            proxy_headers=False,
            server_header=False,
            backlog=s.backlog,
            # Past this many connections open, idle ones close to make room
            # (gateway.h1.reclaim); with none idle, a new request gets a JSON 503 and its
            # connection closed; max_streams + 1,024 by
            # default, so the app's JSON 503 at max_streams comes first while requests, not
            # idle connections, are what is too many. It keeps accepting: unlike granian's
            # backpressure it does not bound descriptors (the worker's limit does).
            limit_concurrency=cap.connections,
            timeout_keep_alive=math.ceil(s.keepalive_s),
            timeout_graceful_shutdown=math.ceil(d.WORKER_EXIT_GRACE_S),
            ssl_certfile=s.tls_cert,
            ssl_keyfile=s.tls_key,
        )
    )
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed; uvicorn logged why
        raise SystemExit(1)


class Forked:
    """``n`` worker processes forked from this one, each running ``serve``. SIGTERM and SIGINT
    are passed on to every worker (each drains on its own, as under granian), and this process
    exits when they all have; a worker still alive ``kill_after_s`` later is killed. A worker
    that dies later is replaced; one that dies in its first WORKER_START_GRACE_S stops them all
    (a worker that cannot start would only fail again), unless it was a replacement and others
    serve: they go on without it (a TLS file changed mid-rotation stopped a serving gateway).
    Worker i's listening socket, socks[i], is closed in the others, and here once stopping or
    given up: else connections would queue for no one."""

    def __init__(
        self, n: int, serve: Callable[[int], None], kill_after_s: float, socks: Listeners = ()
    ) -> None:
        self.n, self.serve, self.kill_after_s, self.socks = n, serve, kill_after_s, socks
        self.started: dict[int, tuple[int, float]] = {}  # pid -> (its index, when forked)
        self.replacements: set[int] = set()  # pids forked to replace a worker that died
        self.stopping = False
        self.failed = False

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._pass_on)
        for index in range(self.n):
            self._fork(index)
        while self.started:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            worker = self.started.pop(pid, None)
            if worker is None or self.stopping:
                continue
            index, born = worker
            code = os.waitstatus_to_exitcode(status)
            starting = time.monotonic() - born < d.WORKER_START_GRACE_S
            replacing = pid in self.replacements
            self.replacements.discard(pid)
            if starting and replacing and self.started:
                # The others serve on; its socket goes (connections queued on it are reset),
                # and its /metrics socket (no sibling's scrape asks it again).
                if self.socks:
                    self.socks[index].close()
                forget(index)
                log.error(
                    "worker %d, a replacement, exited during start-up (status %d): %d "
                    "worker(s) serve on without it; restart the gateway once fixed",
                    pid,
                    code,
                    len(self.started),
                )
                continue
            if starting:
                log.error("worker %d exited during start-up (status %d): stopping", pid, code)
                self.failed = True
                self._pass_on(signal.SIGTERM, None)
                continue
            log.error("worker %d exited (status %d): starting another", pid, code)
            self.replacements.add(self._fork(index))
        if self.failed:
            raise SystemExit(1)

    def _fork(self, index: int) -> int:
        stop_signals = {signal.SIGTERM, signal.SIGINT}
        # Held until the worker has its own handlers: one arriving in between would run this
        # process's _pass_on in the worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: the server's own signal handling, then serve
            code = 0
            try:
                for sig in stop_signals:
                    signal.signal(sig, signal.SIG_DFL)
                # Its own process group: a terminal's Ctrl-C reaches this process only, which
                # passes it on once (a second SIGINT makes uvicorn skip its graceful stop).
                os.setpgid(0, 0)
                term_with_parent(parent)
                for other in (s for i, s in enumerate(self.socks) if i != index):
                    other.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                os.environ[ENV_WORKER] = str(index)  # its replacement's too: /metrics' label
                self.serve(index)
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except GatewayError as exc:  # one line, as at start (a TLS file changed since)
                log.error("worker %d cannot start: %s", os.getpid(), exc)
                code = 2
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()  # batched access lines out before os._exit skips atexit
                os._exit(code)
        self.started[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        return pid

    def _pass_on(self, sig: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            # None is replaced now: each socket is its worker's alone, gone when it stops listening.
            for sock in self.socks:
                sock.close()
            signal.signal(signal.SIGALRM, self._kill)
            signal.setitimer(signal.ITIMER_REAL, self.kill_after_s)
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill(self, _sig: int, _frame: object) -> None:
        for pid in self.started:
            log.warning("worker %d did not stop within %g s: killed", pid, self.kill_after_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def can_listen(host: str, port: int, key: str) -> None:
    """Raise CannotListen where a start could not bind host:port, but for a port in use: a
    config is checked (``gateway --check``) while the gateway it replaces holds its ports."""
    with contextlib.suppress(PortInUse):
        bind(host, port, key).close()


def bind(host: str, port: int, key: str, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port, by default without SO_REUSEPORT, so that a port another
    process listens on (with or without it) is refused; CannotListen says which, in one line.
    ``reuse_port``: for the workers' own sockets, once that check passed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR only lets a restart bind over its predecessor's TIME_WAIT connections.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except (socket.gaierror, UnicodeError) as exc:  # before OSError, which gaierror is
        sock.close()  # the host's fault, not the port's
        why = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)
        raise CannotListen(
            f"cannot listen on {checks.address(host, port)} ({_host_key(key)}): {why}"
        ) from None
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "address already in use (is another gateway running?)",
            errno.EADDRNOTAVAIL: "no such address on this machine",
            errno.EACCES: "permission denied (ports under 1024 need privileges)",
        }.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        at_fault = _host_key(key) if exc.errno == errno.EADDRNOTAVAIL else key
        error = PortInUse if exc.errno == errno.EADDRINUSE else CannotListen
        raise error(f"cannot listen on {checks.address(host, port)} ({at_fault}): {why}") from None
    return sock


def _host_key(port_key: str) -> str:
    """``server.port`` -> ``server.host``: the setting at fault when the address is."""
    return port_key.rsplit(".", 1)[0] + ".host"


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one (no privilege needed); the workers inherit it.
    Every stream holds two descriptors, and distributions' soft default is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit is above the kernel's nr_open: then the soft one stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return fd_limit()


def _log_listeners(config: Config, cap: Capacity) -> None:
    s, ops = config.server, config.ops
    log.info(
        "file descriptors: %d (allows about %d concurrent streams per worker)",
        cap.fds,
        cap.fd_streams,
    )
    if cap.fd_streams < s.max_streams:
        log.warning(
            "server.max_streams = %d needs about %d file descriptors and this process may "
            "open %d: each worker holds %d streams and answers 503 beyond; raise the hard "
            "limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=) to hold more",
            s.max_streams,
            s.max_streams * d.FDS_PER_STREAM + cap.wanted_headroom + d.FD_RESERVE,
            cap.fds,
            cap.streams,
        )
    if not ops.port:
        log.info("ops listener off (ops.port = 0): no /metrics, /routing-table, /admin, /dashboard")
        return
    log.info(
        "ops listener: http://%s (/metrics /routing-table /explain /admin/* /dashboard)%s",
        checks.address(ops.host, ops.port),
        ", token required" if ops.token else "",
    )


def _log_public(config: Config, port: int) -> None:
    """The API's address, as the ops listener's is said: with server.port = 0 the only
    place to learn the port the kernel gave."""
    s = config.server
    scheme = "https" if s.tls_cert else "http"
    log.info(
        "public listener: %s://%s (/v1/ /healthz /readyz /load), %d worker(s) on %s",
        scheme,
        checks.address(s.host, port),
        s.workers,
        s.engine,
    )


def run(config: Config, config_path: Path) -> None:
    s, o = config.server, config.ops
    bind(s.host, s.port, "server.port").close()  # the server binds it again, in a moment
    ops = bind(o.host, o.port, "ops.port") if o.port else None
    # The ops socket for the workers and their /metrics' sockets; a replaced worker's fleet.
    restarted = s.workers > 1 or s.engine == "granian"  # granian's one is a child it restarts
    kept = last_known.kept(restarted, bool(config.redis.url), config.redis.state_file)
    with shared(ops, s.workers), kept:
        cap = capacity(raise_fd_limit(), s.max_streams, s.max_connections)
        _log_listeners(config, cap)
        os.environ[ENV_GATEWAY_PID] = str(os.getpid())
        if s.engine != "uvicorn":  # run_uvicorn's binds its own, and says the port it got
            _log_public(config, s.port)
        if s.engine == "hypercorn":
            engines.run_hypercorn(config, ops)
        elif s.engine == "uvicorn":
            run_uvicorn(config, ops, cap)
        else:
            engines.run_granian(config, config_path, cap)
