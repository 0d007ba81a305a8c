"""log.max_repeats (gateway.logs.RepeatLimit): a flood of lines of one kind that can come once
per request is held to a few per window and counted, in-process on a clock of the test's, then
through a real gateway taking malformed requests; lines of state changes all pass."""

from __future__ import annotations

import io
import logging
import re
import socket
from pathlib import Path

from gateway.logs import RepeatLimit, formatters, repeating
from tests.support import UpstreamSpec, gateway_toml, read_to_eof, start_gateway, start_sim


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _logger(limit: RepeatLimit) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatters("text")[0])
    handler.addFilter(limit)
    logger = logging.getLogger(f"geogate.test-repeats.{id(limit)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_kind_is_held_to_its_burst_per_window_and_the_rest_counted() -> None:
    clock = Clock()
    logger, out = _logger(RepeatLimit(3, 10.0, clock))
    bad = repeating("refused")
    for i in range(8):
        logger.warning("refused a malformed request from %s", f"127.0.0.{i}", extra=bad)
        clock.now += 0.5
    logger.warning("cut %s", "r1", extra=repeating("cut"))  # another kind: its own count
    logger.error("the config file %s is unreadable", "x", extra=bad)  # ERROR: never held
    lines = out.getvalue().splitlines()
    refused = [line for line in lines if "refused a malformed" in line]
    assert [line.split("from ")[1] for line in refused] == [
        "127.0.0.0",
        "127.0.0.1",
        "127.0.0.2 [3 like it in 10 s: more are counted, not logged, until that time is up]",
    ]
    assert any(line.endswith("cut r1") for line in lines), lines
    assert any("ERROR" in line and "unreadable" in line for line in lines), lines
    clock.now += 10.0  # the window is over: the next one passes and says what was not logged
    logger.warning("refused a malformed request from %s", "127.0.0.9", extra=bad)
    last = out.getvalue().splitlines()[-1]
    assert re.search(
        r"from 127\.0\.0\.9 \[5 more like it were not logged in the 10 s from "
        r"\d\d:\d\d:\d\d UTC\]$",
        last,
    ), last
    logger.warning("refused a malformed request from %s", "127.0.0.10", extra=bad)
    assert out.getvalue().splitlines()[-1].endswith("from 127.0.0.10")  # a new window, unsaid


def test_state_changes_are_never_held_back() -> None:
    """An upstream's health, an ejection, an operator's change: one line each, however many
    come at once (a region's 30 upstreams going down together), and none marked."""
    logger, out = _logger(RepeatLimit(2, 10.0, Clock()))
    for i in range(30):
        logger.warning("upstream %s (%s) is now %s", f"u{i}", "eu", "unhealthy")
    assert out.getvalue().count("is now unhealthy") == 30


def test_a_message_that_does_not_format_is_logging_s_to_report() -> None:
    """The filter formats the message to add its note: arguments that do not fit the template
    raised from the filter into the code that logged, where logging itself reports them."""
    logger, out = _logger(RepeatLimit(1, 10.0, Clock()))
    logger.warning("bad %s %s", 1, extra=repeating("bad"))  # must not raise
    assert "bad" not in out.getvalue()  # logging's own error report went to stderr instead


def test_no_limit_at_zero_and_a_limit_of_one_says_so() -> None:
    logger, out = _logger(RepeatLimit(0, 10.0, Clock()))
    for _ in range(50):
        logger.warning("a line %d", 1, extra=repeating("a"))
    assert out.getvalue().count("a line 1\n") == 50
    logger, out = _logger(RepeatLimit(1, 10.0, Clock()))
    for _ in range(5):
        logger.warning("a line %d", 1, extra=repeating("a"))
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith(
            "a line 1 [1 like it in 10 s: more are counted, not logged, until that time is up]"
        )
    )
    assert out.getvalue().count("a line") == 1


def test_a_flood_of_malformed_requests_is_a_few_lines(tmp_path: Path) -> None:
    """Each malformed request wrote a WARNING line: a client sending thousands a second
    flooded the log. With log.max_repeats = 3, three lines, and every request still answered."""
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    ups = [UpstreamSpec("s", "eu-central", sim.url, ["m"])]
    gw = start_gateway(tmp_path, lambda p: gateway_toml(p, ups, extra="[log]\nmax_repeats = 3\n"))
    try:
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                s.sendall(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_to_eof(s).startswith(b"HTTP/1.1 400 "), "every one is answered"
        # Each line is written before its answer (gateway.h1.conn._refuse).
        lines = [ln for ln in gw.log_text().splitlines() if "malformed HTTP/1.1" in ln]
        assert len(lines) == 3, lines
        assert lines[-1].endswith("more are counted, not logged, until that time is up]"), lines
    finally:
        gw.stop()
        sim.proc.kill()
