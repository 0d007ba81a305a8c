"""log.format = "ecs": the formatter and event fields in-process, then a real gateway in front of
real simulated backends writing its access and event logs as ECS JSON, one object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli.procs import kill
from gateway.logs import (
    BatchingStreamHandler,
    direct_sink,
    event,
    formatters,
    json_line,
    pieces,
    utc_ms,
)
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    eventually,
    gateway_toml,
    start_gateway,
    start_sim,
)

TOKEN = "alice-token-0123456789"
CHAT = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def ecs_line(msg: str, *args: object, **extra: object) -> dict[str, Any]:
    record = logging.LogRecord("geogate.health", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    line = formatters("ecs")[0].format(record)
    assert "\n" not in line and "\r" not in line
    doc: dict[str, Any] = json.loads(line)
    return doc


def test_an_event_is_ecs_fields_with_ours_under_geogate() -> None:
    doc = ecs_line(
        "upstream %s ejected",
        "a",
        **event("upstream-ejected", reason="5 consecutive failed requests", upstream="a"),
    )
    assert doc["message"] == "upstream a ejected" and doc["log.level"] == "warning"
    assert doc["event"] == {
        "kind": "event",
        "action": "upstream-ejected",
        "dataset": "geogate.events",
        "reason": "5 consecutive failed requests",
    }
    assert doc["geogate"] == {"upstream": "a"} and doc["service"] == {"name": "geogate"}
    assert doc["log"] == {"logger": "geogate.health"}  # no origin, no copy of the message
    change = event("region-changed", user="alice", change=True, region="eu")
    assert change["event.category"] == ["configuration"] and change["user.name"] == "alice"


def test_a_value_cannot_end_the_line_or_add_a_field() -> None:
    forged = 'x"}\n{"event": {"action": "forged"}, "a": "\r\u0085\u2028'
    doc = ecs_line("%s", forged, **{"http.request.id": forged})
    assert doc["http"]["request"]["id"] == forged and doc["message"] == forged
    assert "action" not in doc.get("event", {})


def test_text_is_the_default_and_reads_as_before() -> None:
    events, access = formatters("text")
    record = logging.LogRecord("geogate", logging.INFO, __file__, 1, "hello", (), None)
    assert events.format(record).endswith("INFO geogate: hello")
    assert access.format(record) == "hello"


# --- a real gateway --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ecs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    """ "bad" is nearest and answers 503 to everything: requests fail over to "good", and the
    5th failure ejects "bad"."""
    tmp = tmp_path_factory.mktemp("ecs")
    bad = start_sim(tmp, "bad", "eu-central", ["m"], "--error-rate", "1", "--error-status", "503")
    good = start_sim(tmp, "good", "us-east", ["m"])
    ups = [
        UpstreamSpec("bad", "eu-central", bad.url, ["m"]),
        UpstreamSpec("good", "us-east", good.url, ["m"]),
    ]
    extra = (
        f'[log]\nformat = "ecs"\n\n[admin]\ntokens = {{alice = "{TOKEN}"}}\n\n'
        '[geoip.default]\nlatitude = 50.11\nlongitude = 8.68\ncountry = "DE"\n'
    )
    gw = start_gateway(tmp, lambda port: gateway_toml(port, ups, extra=extra))
    try:
        yield gw, bad
    finally:
        gw.stop()
        bad.proc.kill()
        good.proc.kill()


def json_lines(gw: Gateway) -> list[dict[str, Any]]:
    """Every line of ours, each a whole JSON object (granian's own lines are not ours)."""
    docs = []
    for line in gw.log_text().splitlines():
        if line.startswith("{"):
            docs.append(json.loads(line))
        else:  # not a text-format line of ours ("2025-01-01 12:00:00,000 INFO geogate: ...")
            assert not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ geo", line), line
    return docs


def access(gw: Gateway) -> list[dict[str, Any]]:
    return [d for d in json_lines(gw) if d.get("event", {}).get("dataset") == "geogate.access"]


def actions(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {d["event"]["action"]: d for d in json_lines(gw) if "action" in d.get("event", {})}


def test_access_lines_are_ecs(ecs_gateway: tuple[Gateway, Sim]) -> None:
    gw, _ = ecs_gateway
    with httpx.Client(timeout=10) as c:
        replies = [c.post(f"{gw.url}/v1/chat/completions", json=CHAT) for _ in range(6)]
    assert all(r.status_code == 200 for r in replies)
    eventually(lambda: len(access(gw)) >= 6, timeout=5, what="six access lines")
    first = next(
        d for d in access(gw) if d["http"]["request"]["id"] == replies[0].headers["x-request-id"]
    )
    assert first["log.level"] == "info" and first["ecs.version"]
    assert first["http"] == {
        "request": {"id": replies[0].headers["x-request-id"], "method": "POST"},
        "response": {"status_code": 200, "body": {"bytes": len(replies[0].content)}},
        "version": "1.1",
    }
    assert first["url"] == {"path": "/v1/chat/completions"}
    assert first["client"] == {"ip": "127.0.0.1", "geo": {"country_iso_code": "DE"}}
    assert first["event"]["kind"] == "event" and first["event"]["outcome"] == "success"
    assert first["event"]["category"] == ["web"] and first["event"]["type"] == ["access"]
    assert isinstance(first["event"]["duration"], int) and first["event"]["duration"] > 0  # ns
    ours = first["geogate"]
    # "bad" was tried first (503), "good" answered: two attempts, the region that served.
    assert (ours["model"], ours["region"], ours["upstream"], ours["attempts"]) == (
        "m",
        "us-east",
        "good",
        2,
    )
    assert 0 < ours["ttfb_ms"] <= first["event"]["duration"] / 1e6


def test_events_are_ecs(ecs_gateway: tuple[Gateway, Sim]) -> None:
    gw, bad = ecs_gateway
    with httpx.Client(timeout=10) as c:
        for _ in range(6):  # 5 failures in a row eject "bad"
            c.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        r = c.patch(
            f"{gw.ops_url}/admin/upstreams/good",
            json={"weight": 2},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text
    kill(bad.proc)
    eventually(
        lambda: {"upstream-ejected", "upstream-changed", "upstream-unhealthy"} <= set(actions(gw)),
        timeout=5,
        what="ejection, operator change and health events",
    )
    seen = actions(gw)
    ejected = seen["upstream-ejected"]
    assert ejected["log.level"] == "warning"
    assert ejected["event"]["reason"] == "5 consecutive failed requests"
    assert ejected["geogate"]["upstream"] == "bad" and ejected["geogate"]["region"] == "eu-central"
    changed = seen["upstream-changed"]
    assert changed["user"] == {"name": "alice"} and changed["event"]["type"] == ["change"]
    assert json.loads(changed["geogate"]["after"]) == {"weight": 2}
    assert seen["upstream-unhealthy"]["geogate"]["upstream"] == "bad"


def test_a_forged_path_stays_inside_its_field(ecs_gateway: tuple[Gateway, Sim]) -> None:
    gw, _ = ecs_gateway
    before = len(access(gw))
    body = json.dumps(CHAT).encode()
    forged = b'/v1/x%0d{"event":%20{"action":%20"forged"}}%C2%85'
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST " + forged + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b'X-Request-Id: x"}\r\nContent-Length: ' + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        while s.recv(65536):
            pass

    def forged_line() -> list[dict[str, Any]]:
        return [d for d in access(gw)[before:] if d["url"]["path"].startswith("/v1/x")]

    eventually(lambda: bool(forged_line()), timeout=5, what="the access line")
    [doc] = forged_line()
    assert doc["url"]["path"] == '/v1/x\r{"event": {"action": "forged"}}\x85'
    assert doc["http"]["response"]["status_code"] == 404
    assert doc["http"]["request"]["id"] != 'x"}' and "forged" not in actions(gw)


def test_access_lines_are_written_in_batches_in_order() -> None:
    """The access handler writes nothing per line: a batch at max_lines, or what flush()
    finds (the app flushes at a tick after a batch's first line, and at shutdown)."""
    handler = BatchingStreamHandler(max_lines=3)
    out = io.StringIO()
    handler.setStream(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("geogate.test-batching")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("one")
        logger.info("two")
        assert out.getvalue() == ""  # held until the batch is full or flushed
        logger.info("three")
        assert out.getvalue() == "one\ntwo\nthree\n"
        logger.info("four")
        handler.flush()
        assert out.getvalue().splitlines() == ["one", "two", "three", "four"]
        handler.flush()  # nothing waiting: nothing written twice
        assert out.getvalue().count("four") == 1
    finally:
        logger.removeHandler(handler)


def test_a_batch_into_a_pipe_goes_in_writes_that_end_at_a_line() -> None:
    lines = [f"line {i} " + "x" * random.randint(50, 900) for i in range(200)]
    got = pieces(lines, 4096)
    assert all(len(p) <= 4096 and p.endswith(b"\n") for p in got)
    assert b"".join(got).decode().splitlines() == lines
    long = "y" * 5000  # longer than a pipe write can keep whole: alone, nothing else cut
    assert pieces(["a", long, "b"], 4096) == [b"a\n", long.encode() + b"\n", b"b\n"]


def test_a_file_or_a_tcp_socket_gets_the_batch_in_one_write(tmp_path: Path) -> None:
    def pipe_fd(stream: Any) -> int | None:
        handler = BatchingStreamHandler(max_lines=10)
        handler.setStream(stream)
        return handler._pipe_fd()

    with open(tmp_path / "access.log", "w") as f:
        assert pipe_fd(f) is None  # a file: one write is whole
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as tcp,
        os.fdopen(os.dup(tcp.fileno()), "w") as stream,
    ):
        assert pipe_fd(stream) is None  # TCP keeps no write whole: not pieces either
    r, w = os.pipe()
    with os.fdopen(w, "w") as stream:
        assert pipe_fd(stream) == w
    os.close(r)


_WRITER = """
import logging, sys
from gateway.logs import BatchingStreamHandler
h = BatchingStreamHandler(max_lines=256)
h.setStream(sys.stderr)
h.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("w")
log.addHandler(h)
log.setLevel(logging.INFO)
for i in range(3000):
    log.info('{"w": %s, "i": %d, "pad": "%s"}', sys.argv[1], i, "x" * 200)
h.flush()
"""


@pytest.mark.parametrize("kind", ["pipe", "unix-socket"])
def test_workers_sharing_a_slow_pipe_never_splice_each_others_lines(kind: str) -> None:
    # Two workers' handlers on one pipe (stderr to a log shipper that reads in bursts): a
    # batch in one write came out cut by the other's, two half lines glued together.
    if kind == "pipe":
        read_end, write_end = os.pipe()
    else:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = ours.detach(), theirs.detach()
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(w)], stderr=write_end) for w in (1, 2)
    ]
    os.close(write_end)
    data = bytearray()
    with os.fdopen(read_end, "rb", buffering=0) as r:
        while chunk := r.read(8192):
            data += chunk
            time.sleep(0.001)  # a reader slower than the writers: the pipe fills
    for p in procs:
        assert p.wait(timeout=30) == 0
    docs = [json.loads(line) for line in data.decode().splitlines()]  # each line whole
    assert sorted((d["w"], d["i"]) for d in docs) == [(w, i) for w in (1, 2) for i in range(3000)]


def _access_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"geogate.test-{name}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_a_finished_line_skips_the_log_record_only_where_that_writes_the_same() -> None:
    handler = BatchingStreamHandler(max_lines=100)
    handler.setFormatter(formatters("text")[1])  # the access log's: the message as it is
    out = io.StringIO()
    handler.setStream(out)
    logger = _access_logger("direct", handler)
    assert direct_sink(logger) is handler
    direct_sink(logger).add('{"a":1}')  # type: ignore[union-attr]
    logger.info('{"b":2}')  # through logging: the same handler, the same order
    handler.flush()
    assert out.getvalue().splitlines() == ['{"a":1}', '{"b":2}']
    # Anything that would change the line or where it goes: back through logging.
    handler.addFilter(lambda r: True)
    assert direct_sink(logger) is None
    handler.filters.clear()
    handler.setFormatter(formatters("ecs")[1])
    assert direct_sink(logger) is None
    handler.setFormatter(formatters("text")[1])
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    assert direct_sink(logger) is None
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)  # the access log off
    assert direct_sink(logger) is None
    assert direct_sink(_access_logger("plain", logging.StreamHandler(io.StringIO()))) is None


@pytest.mark.parametrize(
    "now",
    # .9999996 rounds up to the next second (datetime rounds to the microsecond first).
    [
        0.0,
        1764134123.0,
        1764134123.0005,
        1764134123.25,
        1764134123.9994,
        1764134123.9999996,
        951782400.5,
    ],
)
def test_utc_ms_writes_what_datetime_isoformat_writes(now: float) -> None:
    want = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert utc_ms(now) == want
    assert utc_ms(now + 1) != want  # the cached second moves on


def test_utc_ms_agrees_with_datetime_on_many_times() -> None:
    rng = random.Random(7)
    for _ in range(200_000):
        now = rng.uniform(1.7e9, 1.8e9)
        assert utc_ms(now) == datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


def test_json_line_is_one_ascii_line_of_the_same_json() -> None:
    plain = {"model": "m", "ms": 1.5, "n": None, "status": 200}
    assert json.loads(json_line(plain)) == plain
    tricky = {"model": "x\u2028y\nz\u00e9\U0001f600", "path": '/v1/"q"'}
    line = json_line(tricky)
    assert line.isascii() and "\n" not in line and json.loads(line) == tricky
    # A lone surrogate, which msgspec cannot write as UTF-8: escaped, as it came.
    lone = {"model": "\ud800x"}
    assert json_line(lone) == '{"model":"\\ud800x"}' and json.loads(json_line(lone)) == lone
