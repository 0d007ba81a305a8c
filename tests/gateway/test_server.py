"""The server: HTTP/1.1, h2c with prior knowledge, TLS with ALPN h2, draining on SIGTERM, and
refusing to start on a port in use."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway import server
from gateway.cli.procs import free_port, geogate_cmd, kill, spawn, stop, wait_http
from gateway.errors import CannotListen
from tests.support import (
    UpstreamSpec,
    children,
    eventually,
    gateway_toml,
    read_to_eof,
    self_signed_cert,
    start_fleet,
    start_sim,
)

ENGINES = ["granian", "uvicorn", "hypercorn"]  # all drain alike

BODY = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def test_granian_speaks_http1_and_h2c_prior_knowledge(tmp_path: Path) -> None:
    gw, sim = start_fleet(tmp_path, server_extra='engine = "granian"')
    try:
        with httpx.Client() as c:
            r = c.post(f"{gw.url}/v1/chat/completions", json=BODY)
            assert (r.status_code, r.http_version) == (200, "HTTP/1.1")
        with httpx.Client(http1=False, http2=True) as c:  # prior knowledge, as h2load does
            rs = [c.post(f"{gw.url}/v1/chat/completions", json=BODY) for _ in range(3)]
            assert {(r.status_code, r.http_version) for r in rs} == {(200, "HTTP/2")}
    finally:
        gw.stop()
        sim.proc.kill()


def test_a_granian_worker_that_dies_is_replaced_and_the_gateway_serves_on(
    tmp_path: Path,
) -> None:
    # granian's default stopped the whole gateway when one worker died (exit 1, both ports
    # closed): an OOM kill of one worker was an outage.
    gw, sim = start_fleet(tmp_path, server_extra='engine = "granian"\nworkers = 2')
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        victim = min(children(gw.proc.pid))
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda: len(children(gw.proc.pid) - {victim}) == 2,
            timeout=15,
            what="a worker in the dead one's place",
        )
        assert gw.proc.poll() is None, gw.log_text()[-2000:]
        with httpx.Client() as c:  # served on: each a new connection, either worker's
            for _ in range(6):
                r = c.post(
                    f"{gw.url}/v1/chat/completions", json=BODY, headers={"connection": "close"}
                )
                assert r.status_code == 200, r.text
    finally:
        gw.stop()
        sim.proc.kill()


def test_head_over_h2_on_granian_has_no_body(tmp_path: Path) -> None:
    # A HEAD answer's body went out on granian's HTTP/2: curl and h2 refused the stream
    # (PROTOCOL_ERROR), so a load balancer's HEAD health check failed on a healthy gateway.
    gw, sim = start_fleet(tmp_path, server_extra='engine = "granian"')
    try:
        with httpx.Client(http1=False, http2=True) as c:
            for path in ("/healthz", "/readyz", "/load", "/v1/models", "/v1/nothing"):
                r = c.head(f"{gw.url}{path}")
                assert r.http_version == "HTTP/2" and r.content == b"", (path, r)
                assert r.status_code in (200, 404, 405), (path, r.status_code)
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("engine", ["hypercorn", "granian"])
def test_a_websocket_upgrade_is_refused_without_a_traceback(tmp_path: Path, engine: str) -> None:
    # hypercorn handed it to the 404 answer as a websocket: a 500 and a traceback in the log
    # for each (anyone's to flood); granian answered 404 with sec-websocket-accept.
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"')
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(
                b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
                b"\r\n\r\n"
            )
            head = s.recv(4096).split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 403"), head
        assert b"sec-websocket-accept" not in head
        # A request after it, its access line in the log: what the upgrade logged is before.
        assert httpx.get(f"{gw.url}/after", headers={"x-request-id": "after"}).status_code == 404
        eventually(lambda: '"after"' in gw.log_text(), what="the later request's access line")
        assert "Traceback" not in gw.log_text()
    finally:
        gw.stop()
        sim.proc.kill()


def test_the_default_engine_refuses_h2c_with_a_log_line_in_the_gateways_format(
    tmp_path: Path,
) -> None:
    gw, sim = start_fleet(tmp_path)  # uvicorn: HTTP/1.1 only
    try:
        with httpx.Client(http1=False, http2=True) as c, pytest.raises(httpx.TransportError):
            c.get(f"{gw.url}/healthz")
        said = "refused a malformed HTTP/1.1 request from"  # gateway.h1, in uvicorn's place
        eventually(lambda: said in gw.log_text(), what="the line")
        line = next(x for x in gw.log_text().splitlines() if said in x)
        assert line.startswith("20") and " WARNING " in line, line  # dated, levelled: ours
        with httpx.Client() as c:  # HTTP/1.1 on the same port still works
            assert c.post(f"{gw.url}/v1/chat/completions", json=BODY).status_code == 200
    finally:
        gw.stop()
        sim.proc.kill()


def test_an_idle_keep_alive_connection_outlives_uvicorns_own_5_s(tmp_path: Path) -> None:
    # Pools in front keep idle connections up to 60 s; uvicorn's default closed them after 5,
    # so a pool could send on a connection being closed (SERVER_KEEPALIVE_S = 75).
    gw, sim = start_fleet(tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        assert _readyz(conn)[0] == 200
        assert conn.sock is not None
        local = conn.sock.getsockname()
        time.sleep(6)
        assert _readyz(conn)[0] == 200
        assert conn.sock is not None and conn.sock.getsockname() == local  # not reconnected
    finally:
        conn.close()
        gw.stop()
        sim.proc.kill()


def test_server_keepalive_s_sets_how_long_an_idle_connection_is_kept(tmp_path: Path) -> None:
    gw, sim = start_fleet(tmp_path, server_extra="keepalive_s = 1")
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            got = read_to_eof(s)  # the answer, then the close after a second idle
            took = time.monotonic() - t0
        # 75 s by default: 20 says the setting was taken, with room for a loaded machine.
        assert got.startswith(b"HTTP/1.1 200") and 0.8 < took < 20, (got[:40], took)
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize(("engine", "negotiated"), [("granian", "HTTP/2"), ("uvicorn", "HTTP/1.1")])
def test_tls_with_alpn(tmp_path: Path, engine: str, negotiated: str) -> None:
    """granian offers h2 and http/1.1 by ALPN; uvicorn (the default) HTTP/1.1 only, so a
    client that would take h2 gets HTTP/1.1, not an error."""
    cert, key = self_signed_cert(tmp_path)
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"\nengine = "{engine}"'
    port = free_port()
    cfg = tmp_path / "tls.toml"
    cfg.write_text(gateway_toml(port, ups).replace("[server]", "[server]\n" + tls))
    proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), tmp_path / "tls.log")
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        wait_http(f"{url}/healthz", proc=proc, context=ctx)
        # TLS 1.2 on every engine (granian's own floor of 1.3 refused it), and ALPN agreed
        # on every engine (uvicorn's agreed none: the protocol class offered no list).
        raw = ssl.create_default_context(cafile=str(cert))
        raw.maximum_version = ssl.TLSVersion.TLSv1_2
        raw.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            raw.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock,
        ):
            assert tls_sock.version() == "TLSv1.2"
            agreed = "h2" if negotiated == "HTTP/2" else "http/1.1"
            assert tls_sock.selected_alpn_protocol() == agreed
        with httpx.Client(http2=True, verify=ctx) as c:
            r = c.post(f"{url}/v1/chat/completions", json=BODY)
        assert (r.status_code, r.http_version) == (200, negotiated)  # by ALPN
        with httpx.Client(verify=ctx) as c:
            r = c.post(f"{url}/v1/chat/completions", json=BODY)
        assert (r.status_code, r.http_version) == (200, "HTTP/1.1")
    finally:
        stop(proc)
        sim.proc.kill()


def _stream_in_thread(url: str, out: list[str], tokens: int = 10) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                timeout=30,
                json={**BODY, "max_tokens": tokens, "stream": True},
            ) as r:
                out.extend(r.iter_lines())
        except httpx.HTTPError as exc:
            out.append(f"ERROR {type(exc).__name__}")

    t = threading.Thread(target=run)
    t.start()
    return t


def _readyz(conn: http.client.HTTPConnection) -> tuple[int, str]:
    conn.request("GET", "/readyz")
    r = conn.getresponse()
    return r.status, r.read().decode()


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_drains_streams_while_readyz_answers_503(tmp_path: Path, engine: str) -> None:
    # 40 tokens at 5/s: an 8 s stream, in flight when SIGTERM arrives and through the checks
    # below on a loaded machine (15 left them about a second of a 3 s stream).
    gw, sim = start_fleet(tmp_path, "--tokens-per-s", "5", server_extra=f'engine = "{engine}"')
    kept = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)  # a balancer's check
    try:
        assert _readyz(kept)[0] == 200
        assert kept.sock is not None
        local = kept.sock.getsockname()
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines, tokens=40)
        eventually(lambda: bool(lines), what="the stream to start")
        gw.proc.send_signal(signal.SIGTERM)
        # From the moment SIGTERM arrives, on the kept-alive connection and on new ones: the
        # balancer sees a draining target, not a dead one (before: connection refused).
        eventually(lambda: _readyz(kept)[0] == 503, timeout=5, what="503 on the kept connection")
        assert kept.sock is not None and kept.sock.getsockname() == local  # the same connection
        r = httpx.get(f"{gw.url}/readyz")  # a new connection
        assert (r.status_code, r.text) == (503, "draining")
        # The API still answers while the balancer catches up, as nginx and Envoy do.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=BODY).status_code == 200
        assert lines[-1:] != ["data: [DONE]"], "the stream ended before the checks: too slow"
        t.join(30)
        assert "data: [DONE]" in lines, lines[-3:]  # the stream in flight finished
        assert gw.proc.wait(20) == 0
        assert "drained: no request in flight" in gw.log_text()
    finally:
        kept.close()
        gw.stop()
        sim.proc.kill()


def test_sighup_drains_and_stops_as_sigterm_does(tmp_path: Path) -> None:
    """No reload to run: a HUP (a closed terminal, a reload out of habit) is not the default
    death with every stream cut."""
    # The gateway inherits this process's disposition: under nohup (CI's) SIGHUP is ignored,
    # and an ignored one it keeps ignoring (the next test).
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        gw, sim = start_fleet(tmp_path, "--tokens-per-s", "5")
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines, tokens=10)
        eventually(lambda: bool(lines), what="the stream to start")
        gw.proc.send_signal(signal.SIGHUP)
        t.join(30)
        assert "data: [DONE]" in lines, lines[-3:]  # the stream in flight finished
        assert gw.proc.wait(20) == 0
        log = gw.log_text()
        assert "SIGHUP: geogate has no reload; draining and stopping as on SIGTERM" in log
        assert "drained: no request in flight" in log
        assert "SIGTERM: draining" not in log  # it named a signal nobody sent
        assert "draining (/readyz answers 503); 1 request(s) in flight" in log
    finally:
        gw.stop()
        sim.proc.kill()


def test_under_nohup_sighup_stays_ignored(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        gw, sim = start_fleet(tmp_path)
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        gw.proc.send_signal(signal.SIGHUP)
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        # Then SIGTERM: a clean drain (status 0) and no word of the HUP, which a default
        # disposition would have answered with death (-1) and our handler with a log line.
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
        assert "SIGHUP" not in gw.log_text() and "drained" in gw.log_text()
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_drain_timeout_cuts_streams_that_run_too_long(tmp_path: Path, engine: str) -> None:
    gw, sim = start_fleet(
        tmp_path,
        "--tokens-per-s",
        "2",
        server_extra=f'drain_timeout_s = 1\nengine = "{engine}"',
    )
    try:
        lines: list[str] = []
        t = _stream_in_thread(
            gw.url, lines, tokens=40
        )  # 40 tokens at 2/s: 20 s, over the 1 s drain
        eventually(lambda: bool(lines), what="the stream to start")
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(15)
        t.join(15)
        assert time.monotonic() - t0 < 12  # the 1 s drain's cut, not the stream's 20 s end
        assert "data: [DONE]" not in lines
        # It ends with an event that says why (the SDKs raise it), not with a reset, which
        # the SDKs read as a connection error.
        last = json.loads([ln for ln in lines if ln][-1].removeprefix("data: "))
        assert last.get("error", {}).get("code") == "gateway_shutting_down", lines[-3:]
        assert "server.drain_timeout_s" in last["error"]["message"]
        assert "cutting 1 request(s) in flight" in gw.log_text()
        # Its access line says it was cut, and by what (it said a clean 200).
        [access] = [json.loads(ln) for ln in gw.log_text().splitlines() if ln.startswith("{")]
        assert (access["status"], access["aborted"]) == (200, "drain"), access
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_request_still_waiting_when_the_drain_ends_gets_a_503_it_can_retry(
    tmp_path: Path, engine: str
) -> None:
    """Cut by the drain's deadline before its answer started, a request gets the gateway's
    JSON 503 (not the server's plain 500) and its access line says 503."""
    gw, sim = start_fleet(
        tmp_path, "--ttft-ms", "8000", server_extra=f'drain_timeout_s = 0.5\nengine = "{engine}"'
    )
    try:
        answers: list[httpx.Response] = []

        def ask() -> None:
            answers.append(httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, timeout=20))

        t = threading.Thread(target=ask)
        t.start()
        eventually(lambda: sim.stats()["active"] == 1, what="the request at the backend")
        gw.proc.send_signal(signal.SIGTERM)
        t.join(15)
        [r] = answers
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "gateway_shutting_down" and "drain_timeout_s" in err["message"]
        rid = r.headers["x-request-id"]
        gw.proc.wait(10)
        line = next(ln for ln in gw.log_text().splitlines() if rid in ln and ln.startswith("{"))
        assert json.loads(line)["status"] == 503, line
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize("taken", ["server", "ops"])
def test_a_port_in_use_stops_a_second_gateway_in_one_line(tmp_path: Path, taken: str) -> None:
    gw, sim = start_fleet(tmp_path)
    try:
        ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
        port = gw.port if taken == "server" else free_port()
        ops_port = gw.ops_port if taken == "ops" else free_port()
        cfg = tmp_path / "second.toml"
        cfg.write_text(gateway_toml(port, ups) + f"\n[ops]\nport = {ops_port}\n")
        second = subprocess.Popen(
            geogate_cmd("gateway", "--config", str(cfg)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stderr = second.communicate(timeout=30)[1].decode()
        except subprocess.TimeoutExpired:
            kill(second)  # the whole group: granian's worker too
            raise AssertionError("a second gateway started on a port in use") from None
        busy = gw.port if taken == "server" else gw.ops_port
        assert second.returncode == 2, stderr
        assert stderr == (
            f"geogate: cannot listen on 127.0.0.1:{busy} ({taken}.port): "
            "address already in use (is another gateway running?)\n"
        )
        # The first gateway still serves, alone.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=BODY).status_code == 200
    finally:
        gw.stop()
        sim.proc.kill()


@pytest.mark.parametrize(
    "bad",
    [
        "[gateway]\nregion = 'mars'\n[[regions]]\nid='x'\nlatitude=0\nlongitude=0\n",
        "not toml at all [",
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, bad: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(bad)
    p = subprocess.run(
        geogate_cmd("gateway", "--config", str(cfg)), capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert str(cfg) in p.stderr


def _connection_owners(port: int) -> set[int]:
    """The pids holding the server side of established connections on ``port``."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(m) for m in re.findall(r"pid=(\d+)", out)}


def test_uvicorn_workers_serve_and_drain_on_sigterm(tmp_path: Path) -> None:
    gw, sim = start_fleet(
        tmp_path, "--tokens-per-s", "5", server_extra='engine = "uvicorn"\nworkers = 2'
    )
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        # Connections spread over both workers' sockets (SO_REUSEPORT): held open, then seen
        # from the server side, each owned by one worker.
        conns = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5) for _ in range(16)]
        try:
            assert {_readyz(c)[0] for c in conns} == {200}
            owners = _connection_owners(gw.port)
        finally:
            for c in conns:
                c.close()
        assert owners == children(gw.proc.pid), owners
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines, tokens=10)
        eventually(lambda: bool(lines), what="the stream to start")
        gw.proc.send_signal(signal.SIGTERM)  # to the parent, which passes it on
        t.join(15)
        assert "data: [DONE]" in lines, lines[-3:]
        assert gw.proc.wait(10) == 0
        assert gw.log_text().count(": draining (/readyz answers 503)") == 2  # each worker drained
    finally:
        gw.stop()
        sim.proc.kill()


def test_uvicorn_workers_draining_leave_no_socket_that_nobody_serves(tmp_path: Path) -> None:
    """A worker that drained and exited takes its SO_REUSEPORT socket with it: new connections
    go to the worker still draining (503) or are refused, not queued for nobody to answer."""
    gw, sim = start_fleet(
        tmp_path, "--tokens-per-s", "2", server_extra='engine = "uvicorn"\nworkers = 2'
    )
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        lines: list[str] = []
        t = _stream_in_thread(gw.url, lines, tokens=40)  # 20 s: held through the checks
        eventually(lambda: bool(lines), what="the stream to start")
        gw.proc.send_signal(signal.SIGTERM)
        eventually(lambda: len(children(gw.proc.pid)) == 1, what="the idle worker to exit")
        answers = []
        for _ in range(12):  # each lands on either socket, by the kernel's hash of its port
            try:
                # A connection queued for nobody hangs for good; a loaded machine's answer
                # can take a second.
                r = httpx.get(f"{gw.url}/readyz", timeout=5)
                answers.append((r.status_code, r.text))
            except httpx.ConnectError:
                answers.append((0, "refused"))
            except httpx.TimeoutException:
                answers.append((-1, "hung"))
        assert set(answers) <= {(503, "draining"), (0, "refused")}, answers
        assert lines[-1:] != ["data: [DONE]"], "the stream ended before the checks: too slow"
        t.join(30)
        assert "data: [DONE]" in lines, lines[-3:]
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()
        sim.proc.kill()


def test_uvicorn_worker_dying_at_start_stops_the_gateway(tmp_path: Path) -> None:
    gw, sim = start_fleet(tmp_path, server_extra='engine = "uvicorn"\nworkers = 2')
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        gone = min(children(gw.proc.pid))
        subprocess.run(["kill", "-KILL", str(gone)], check=True)
        # Within WORKER_START_GRACE_S of its fork: a worker that cannot start would only fail
        # again, so the gateway stops (its supervisor, systemd or Kubernetes, restarts it).
        assert gw.proc.wait(15) == 1
        assert f"worker {gone} exited during start-up (status -9): stopping" in gw.log_text()
    finally:
        gw.stop()
        sim.proc.kill()


FORKED = """
import os, signal, sys
from gateway import defaults, server
defaults.WORKER_START_GRACE_S = 0.0
marks = sys.argv[1]
def mark() -> None:  # its index, as its /metrics finds it (gateway.http.worker_metrics)
    with open(os.path.join(marks, str(os.getpid())), "w") as f:
        f.write(os.environ["_GEOGATE_WORKER"])
def serve(index: int) -> None:
    try:
        os.close(os.open(os.path.join(marks, "first"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        if index == 1:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that will not stop
        mark()  # set up: the test may go on
        signal.pause()  # until SIGTERM, passed on by the parent
    else:
        mark()
        raise SystemExit(3)  # the first worker dies once it ran
server.Forked(2, serve, kill_after_s=1.0).run()
"""


def test_a_worker_that_dies_later_is_replaced_and_one_that_hangs_is_killed(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKED, str(tmp_path)], stderr=subprocess.PIPE, text=True
    )
    try:
        eventually(
            lambda: len(list(tmp_path.iterdir())) == 4,  # "first" and three workers
            timeout=10,
            what="a third worker, replacing the one that died",
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert 0.9 <= time.monotonic() - t0 < 9  # worker 1 ignored SIGTERM: killed after 1 s
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "exited (status 3): starting another" in err
        assert "did not stop within 1 s: killed" in err
        assert "Traceback" not in err  # SystemExit(3) is an exit status, not a failure
        # Each worker's index, the one that died's again in its replacement: a worker's
        # /metrics series are labelled with it, and restart from 0 rather than begin anew.
        indexes = sorted(p.read_text() for p in tmp_path.iterdir() if p.name != "first")
        assert indexes in (["0", "0", "1"], ["0", "1", "1"]), indexes
    finally:
        proc.kill()


@pytest.mark.parametrize("engine", ["uvicorn", "granian"])
def test_workers_stop_when_their_parent_is_killed(tmp_path: Path, engine: str) -> None:
    # granian's workers had no tie to their parent: one it had respawned went on serving the
    # port after the main process was killed in its stop, with nothing left to stop it.
    gw, sim = start_fleet(tmp_path, server_extra=f'engine = "{engine}"\nworkers = 2')
    try:
        eventually(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        if engine == "granian":  # one of the two a replacement (uvicorn's: after its grace)
            victim = min(children(gw.proc.pid))
            os.kill(victim, signal.SIGKILL)
            eventually(
                lambda: len(children(gw.proc.pid) - {victim}) == 2, timeout=15, what="a new one"
            )
        workers = children(gw.proc.pid)
        gw.proc.kill()  # SIGKILL: no chance to pass anything on
        gw.proc.wait(5)

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in workers)

        eventually(gone, timeout=15, what="the orphaned workers to stop")
    finally:
        gw.stop()
        sim.proc.kill()


def test_server_port_0_says_the_port_it_got(tmp_path: Path) -> None:
    """The log named the ops listener's address, never the API's: with port 0 the port the
    kernel gave could not be found."""
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    cfg = tmp_path / "gw.toml"
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    cfg.write_text(gateway_toml(0, ups, extra="[ops]\nport = 0\n"))
    log = tmp_path / "gw.log"
    proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), log)
    try:
        found: list[str] = []

        def said() -> bool:
            found[:] = re.findall(r"public listener: (http://127\.0\.0\.1:\d+) ", log.read_text())
            return bool(found)

        eventually(said, what="the public listener's line")
        assert not found[0].endswith(":0")
        wait_http(f"{found[0]}/healthz", 30)
        assert httpx.get(f"{found[0]}/v1/models").json()["data"][0]["id"] == "m"
    finally:
        stop(proc)
        sim.proc.kill()


RETIRED = """
import os, signal, sys, time
from gateway import defaults, server
from gateway.errors import ConfigError
defaults.WORKER_START_GRACE_S = 1.0
marks = sys.argv[1]
os.environ["_GEOGATE_METRICS_DIR"] = marks  # the workers' /metrics sockets: stand-ins here
for i in (0, 1):
    open(os.path.join(marks, f"{i}.sock"), "w").close()
def serve(index: int) -> None:
    if index == 1:
        signal.pause()  # serves on, until SIGTERM
    elif os.path.exists(os.path.join(marks, "died")):  # worker 0's replacement cannot start
        open(os.path.join(marks, "replacement"), "w").close()
        raise ConfigError("server.tls_key: not the key of the certificate (a test's)")
    else:  # worker 0 serves past its start-up grace, then dies
        time.sleep(1.5)
        open(os.path.join(marks, "died"), "w").close()
        raise SystemExit(3)
server.Forked(2, serve, kill_after_s=1.0).run()
"""


def test_a_replacement_that_cannot_start_leaves_the_others_serving(tmp_path: Path) -> None:
    # A TLS file changed mid-rotation: the replacement of a worker that died failed at start,
    # and that stopped the whole gateway, the worker still serving with it.
    marks, log = tmp_path / "marks", tmp_path / "log"
    marks.mkdir()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", RETIRED, str(marks)], stderr=out)
    try:
        said = "a replacement, exited during start-up (status 2): 1 worker(s) serve on"
        eventually(lambda: said in log.read_text(), what="the parent's word on it")
        assert proc.poll() is None, "the gateway stopped"
        # Its /metrics socket is gone (every scrape tried it, and warned), the other's stays.
        assert not (marks / "0.sock").exists() and (marks / "1.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = log.read_text()
        assert "cannot start: server.tls_key: not the key of the certificate" in err
        assert "Traceback" not in err
    finally:
        proc.kill()


@pytest.mark.parametrize(
    ("host", "key", "said"),
    [
        ("not a host", "server.host", "cannot listen on not a host:"),
        ("192.0.2.1", "ops.host", "no such address on this machine"),  # TEST-NET: not ours
    ],
)
def test_an_address_that_cannot_be_listened_on_names_the_host_setting(
    host: str, key: str, said: str
) -> None:
    # It named server.port for a host name that does not resolve, or an address not here.
    with pytest.raises(CannotListen) as err:
        server.bind(host, 0, key.replace(".host", ".port"))
    assert said in str(err.value) and f"({key})" in str(err.value), err.value
