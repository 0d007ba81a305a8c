"""The world's client: TTFT is the first chunk with text (not the headers, not the role
chunk), and a backend's own TTFT is measured the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.cli.procs import route_field
from gateway.cli.world_client import _has_content, ask, backend_ttft_ms
from gateway.cli.world_run import pick_sites
from tests.support import start_sim


def test_the_route_header_names_the_region() -> None:
    assert route_field("upstream=us-east-1; region=us-east; attempts=1", "region") == "us-east"
    assert route_field("", "region") == "-"


@pytest.mark.parametrize(
    ("line", "content"),
    [
        (b'data: {"choices":[{"delta":{"role":"assistant"}}]}', False),
        (b'data: {"choices":[{"delta":{"content":""}}]}', False),
        (b'data: {"choices":[{"delta":{"content":"hi"}}]}', True),
        (b"data: {not json", False),
    ],
)
def test_only_a_chunk_with_text_counts(line: bytes, content: bool) -> None:
    assert _has_content(line) is content


def test_ttft_and_total_against_a_backend(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "s", "eu-central", ["world-llm"], "--ttft-ms", "60")
    london = pick_sites(["London"])[0]
    try:
        s = asyncio.run(ask(sim.url, "eu-central", "steady", "dns", london, 0.0))
        assert s.ok and s.ttft_ms is not None and s.total_ms is not None
        assert 60 <= s.ttft_ms < s.total_ms and s.region == "eu-central"
        assert 60 <= asyncio.run(backend_ttft_ms(sim.url, london, n=3)) < 150
    finally:
        sim.proc.kill()


def test_a_dead_backend_is_a_failed_sample() -> None:
    from gateway.cli.procs import free_port

    london = pick_sites(["London"])[0]
    s = asyncio.run(ask(f"http://127.0.0.1:{free_port()}", "x", "fail", "dns", london, 0.0))
    assert not s.ok and s.ttft_ms is None and s.total_ms is None


def test_a_backend_that_never_streams_is_one_line_naming_its_log(tmp_path: Path) -> None:
    from gateway.cli.errors import CLIError
    from gateway.cli.procs import free_port

    log = tmp_path / "eu-central.log"
    log.write_text("loading model\nout of memory\n")
    london = pick_sites(["London"])[0]
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CLIError) as info:
        asyncio.run(backend_ttft_ms(url, london, n=1, log=log))
    assert str(info.value) == (
        f"world: {url}: no streamed answer with content from the backend; "
        f"see {log} (last line: out of memory)"
    )


def test_an_events_request_that_fails_is_one_line() -> None:
    # A drain sent to an edge gateway that died, or one that refuses it: not a traceback.
    from gateway.cli.errors import CLIError
    from gateway.cli.procs import free_port
    from gateway.cli.world_client import send_json

    url = f"http://127.0.0.1:{free_port()}/admin/regions/eu"
    with pytest.raises(
        CLIError, match=r"^world: PATCH http://127\.0\.0\.1:\d+/admin/regions/eu failed: "
    ):
        send_json(url, {"drained": True}, "PATCH", "token")
