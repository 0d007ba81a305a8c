"""Real processes for tests: simulated backends and gateways on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from bench.proc_cpu import stat_fields
from gateway.cli.procs import (
    ADDRESS_IN_USE,
    START_TRIES,
    PortPicker,
    free_port,
    geogate_cmd,
    regions_toml,
    spawn,
    stop,
    wait_http,
)
from gateway.config import Config

# Cloud regions used by the tests (from the package's table of known regions).
REGIONS = ("eu-central", "us-east", "ap-southeast", "sa-east")


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    port: int
    region: str
    name: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=2) as r:
            data: dict[str, object] = json.loads(r.read())
            return data


def start_sim(tmp: Path, name: str, region: str, models: Sequence[str], *knobs: str) -> Sim:
    port = free_port()
    args = ["sim-backend", "--port", str(port), "--region", region, "--name", name]
    for m in models:
        args += ["--model", m]
    proc = spawn(geogate_cmd(*args, *knobs), tmp / f"sim-{name}.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return Sim(proc, port, region, name)


@dataclass
class UpstreamSpec:
    id: str
    region: str
    url: str
    models: Sequence[str]
    extra: str = ""


def gateway_toml(
    port: int,
    upstreams: Sequence[UpstreamSpec],
    *,
    region: str = "eu-central",
    origin: str = "client",
    extra: str = "",
) -> str:
    lines = [
        "[gateway]",
        f'region = "{region}"',
        f'origin = "{origin}"',
        "",
        "[server]",
        f"port = {port}",
        "",
        "[health]",
        "interval_s = 0.2",
        "timeout_s = 0.5",
        "unhealthy_threshold = 1",
        "healthy_threshold = 1",
        "",
        extra,
    ]
    lines.append(regions_toml(*REGIONS))
    for u in upstreams:
        lines += [
            "[[upstreams]]",
            f'id = "{u.id}"',
            f'region = "{u.region}"',
            f'url = "{u.url}"',
            "models = [" + ", ".join(f'"{m}"' for m in u.models) + "]",
            u.extra,
            "",
        ]
    return "\n".join(lines)


@dataclass
class Service:
    """A server process of ours (gateway or model server) on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    ops_port: int = 0  # a gateway's ops listener (/metrics, /routing-table, /explain, /admin)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        assert self.ops_port, "this service has no ops listener"
        return f"http://127.0.0.1:{self.ops_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc)


Gateway = Service


def with_ops_port(toml: str, ops_port: int) -> str:
    """The config with its ops listener on ``ops_port`` (into its [ops] table if it has one):
    the default port would be shared by every gateway a test starts."""
    if "[ops]" in toml:
        return toml.replace("[ops]", f"[ops]\nport = {ops_port}", 1)
    return f"{toml}\n[ops]\nport = {ops_port}\n"


@contextlib.contextmanager
def serving(gw: Gateway, sims: dict[str, Sim]) -> Iterator[tuple[Gateway, dict[str, Sim]]]:
    """A module's gateway and its simulated backends, stopped and killed on the way out."""
    try:
        yield gw, sims
    finally:
        gw.stop()
        for s in sims.values():
            s.proc.kill()


def start_gateway(tmp: Path, toml_for_port: Callable[[int], str], name: str = "gw") -> Gateway:
    pick = PortPicker()  # two different ports
    port, ops_port = pick(), pick()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(with_ops_port(toml_for_port(port), ops_port))
    log = tmp / f"{name}.log"
    proc = spawn(geogate_cmd("gateway", "--config", str(cfg)), log)
    gw = Gateway(proc, port, log, ops_port)
    wait_http(f"{gw.url}/healthz", proc=proc)
    return gw


def children(pid: int) -> set[int]:
    """The processes ``pid`` forked (every thread's: granian respawns from its serve loop)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            listed = (task / "children").read_text()
        except FileNotFoundError:  # the thread ended after iterdir() listed it
            continue
        found.update(int(c) for c in listed.split())
    return found


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


CHAT_BODY = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything a blocking socket receives until its peer closes."""
    got = bytearray()
    while chunk := sock.recv(1 << 16):
        got += chunk
    return bytes(got)


def served_by(url: str, n: int) -> Counter[str]:
    """Send ``n`` chat requests to a gateway; count the upstream that served each (from the
    geogate-route header). Every one must succeed."""
    out: Counter[str] = Counter()
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            r = c.post(f"{url}/v1/chat/completions", json=CHAT_BODY)
            assert r.status_code == 200, r.text
            out[r.headers["geogate-route"].split("upstream=")[1].split(";")[0]] += 1
    return out


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, object] = json.loads(r.read())
        return data


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, stoppable and restartable on that port."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                # Its files (a test's SAVE) in the test's folder, not the working directory,
                # from which a dump.rdb left there would be loaded at the next start.
                "--dir",
                str(self.log.parent),
            ],
            self.log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = subprocess.run(
                ["redis-cli", "-p", str(self.port), "info", "server"],
                capture_output=True,
                text=True,
            )
            # This server's answer, not another test worker's on a port taken meanwhile
            if f"process_id:{self.proc.pid}\n" in p.stdout:
                return
            if self.proc.poll() is not None:  # gone: its port taken, say (start_redis)
                raise TimeoutError(f"redis-server exited: {self.log.read_text()[-300:]}")
            time.sleep(0.02)
        raise TimeoutError("redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def start_redis(tmp: Path) -> RedisServer:
    """A redis-server on a free port. The port free_port found can be taken before redis binds
    it (an outgoing connection of another test worker): then another port, as start_all
    tries one (gateway.cli.procs)."""
    for attempt in range(1, START_TRIES + 1):
        r = RedisServer(free_port(), tmp / "redis.log")
        seen = r.log.stat().st_size if r.log.exists() else 0  # the log is appended to
        try:
            r.start()
            return r
        except TimeoutError:
            r.stop()
            if attempt == START_TRIES or ADDRESS_IN_USE not in r.log.read_text()[seen:].lower():
                raise
    raise AssertionError("unreachable: the last try returns or raises")


@contextlib.contextmanager
def one_sim_gateway(tmp: Path, extra: str) -> Iterator[Gateway]:
    """A gateway whose config has ``extra`` (its own sections), in front of one simulated
    backend ("s", model "m"); both stopped after."""
    sim = start_sim(tmp, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    try:
        g = start_gateway(tmp, lambda p: gateway_toml(p, ups, extra=extra))
        try:
            yield g
        finally:
            g.stop()
    finally:
        sim.proc.kill()


def answer_whole(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (("Content-Type", "application/json"),),
) -> None:
    """A scripted upstream's whole answer (``serve_http``'s handlers): ``headers``, then
    Content-Length and ``body``."""
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a threaded HTTP server on 127.0.0.1 (a scripted upstream); its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def scripted_gateway(
    tmp: Path,
    handler: type[http.server.BaseHTTPRequestHandler],
    models: Iterable[str],
    edit: Callable[[str], str] = lambda toml: toml,
) -> Iterator[Gateway]:
    """A gateway in front of one scripted upstream ("up", in eu-central, serving ``models``:
    ``serve_http``'s ``handler``); ``edit``: the config's text changed (a section added)."""
    with serve_http(handler) as url:
        ups = [UpstreamSpec("up", "eu-central", url, list(models))]
        gw = start_gateway(tmp, lambda port: edit(gateway_toml(port, ups)))
        try:
            yield gw
        finally:
            gw.stop()


def start_fleet(tmp: Path, *sim_knobs: str, server_extra: str = "") -> tuple[Gateway, Sim]:
    """One simulated backend ("s", model "m", with ``sim_knobs``) behind one gateway whose
    ``[server]`` section gets ``server_extra``; the caller stops both."""
    sim = start_sim(tmp, "s", "eu-central", ["m"], *sim_knobs)
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    try:
        gw = start_gateway(
            tmp, lambda p: gateway_toml(p, ups).replace("[server]", "[server]\n" + server_extra)
        )
    except BaseException:
        sim.proc.kill()  # a gateway that does not start leaves no backend behind
        raise
    return gw, sim


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate for 127.0.0.1 and localhost (openssl), and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def until(check: Callable[[], bool], within_s: float = 2.0, what: str = "condition") -> None:
    """Poll ``check`` on the running loop until it holds; fail after ``within_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(0.005)


def eu_config(**sections: Any) -> Config:
    """One region "eu" and one upstream "a" (model "m") where nothing listens, then
    ``sections`` (e.g. server={"workers": 3}): a config for code that never sends to it."""
    upstream = {"id": "a", "region": "eu", "url": "http://127.0.0.1:1", "models": ["m"]}
    return Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
            "upstreams": [upstream],
            **sections,
        }
    )


def pool_config(*more: dict[str, Any], **sections: Any) -> Config:
    """One region "eu", a DNS-discovered upstream "pool" (members "pool@<addr>:<port>")
    serving model "m", then ``more`` upstreams and ``sections`` (e.g. health=...)."""
    pool = {
        "id": "pool",
        "region": "eu",
        "url": "http://pool.test:8000",
        "models": ["m"],
        "discovery": "dns",
    }
    return Config.model_validate(
        {
            "gateway": {"region": "eu"},
            "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
            "upstreams": [pool, *more],
            **sections,
        }
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever inherited it to reap it."""
    try:
        return stat_fields(pid)[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def access_line(gw: Gateway, rid: str) -> dict[str, Any]:
    """The access log's line for request ``rid`` (the log is JSON lines), once written."""

    def line_of() -> dict[str, Any] | None:
        for ln in gw.log_text().splitlines():
            if ln.startswith("{") and json.loads(ln).get("rid") == rid:
                return cast("dict[str, Any]", json.loads(ln))
        return None

    eventually(lambda: line_of() is not None, timeout=5, what="the access log line")
    doc = line_of()
    assert doc is not None
    return doc
