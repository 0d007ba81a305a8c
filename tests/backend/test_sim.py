"""The sim-backend's chat stream sends its role chunk with the first token, as vLLM does (a
proxy that times the first byte must not take the role chunk, sent before the prefill, for the
first token); ``role_first`` (POST /sim/config) sends it at once, as some servers do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.support import Sim, eventually, start_sim

TTFT_S = 0.3


def _stream(sim: Sim) -> tuple[float, list[bytes]]:
    """One chat stream over a raw socket: when its role chunk arrived (seconds after the
    request was sent), and its body's HTTP chunks."""
    body = json.dumps(
        {"model": "m", "stream": True, "max_tokens": 2, "messages": [{"role": "user"}]}
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        got, role_at = b"", None
        while data := s.recv(1 << 16):
            got += data
            if role_at is None and b'"role": "assistant"' in got:
                role_at = time.monotonic() - t0
    assert role_at is not None, got
    rest = got.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while rest:
        size, rest = rest.split(b"\r\n", 1)
        n = int(size, 16)
        chunks.append(rest[:n])
        rest = rest[n + 2 :]
    return role_at, [c for c in chunks if c]


def test_the_role_chunk_goes_with_the_first_token(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "s", "eu-central", ["m"], "--ttft-ms", str(TTFT_S * 1000))
    try:
        role_at, chunks = _stream(sim)
        assert role_at >= TTFT_S - 0.02, role_at  # not before the prefill
        events = chunks[0].split(b"\n\n")  # one write: role, then the first token
        assert b'"role": "assistant"' in events[0] and b'"content": "the"' in events[1], chunks
        req = urllib.request.Request(
            f"{sim.url}/sim/config", data=json.dumps({"role_first": True}).encode(), method="POST"
        )
        assert json.loads(urllib.request.urlopen(req, timeout=5).read())["role_first"] is True
        role_at, chunks = _stream(sim)
        assert role_at < TTFT_S - 0.1, role_at  # at once, ahead of the prefill
        assert b'"content": "the"' not in chunks[0], chunks
    finally:
        sim.proc.kill()


def test_role_first_is_a_bool_or_refused(tmp_path: Path) -> None:
    """The string "false" was taken as true (a non-empty string): the role chunk went first."""
    sim = start_sim(tmp_path, "s", "eu-central", ["m"])
    try:
        for bad in ("false", "true", 0, 1, None):
            r = httpx.post(f"{sim.url}/sim/config", json={"role_first": bad}, timeout=5)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["message"] == f"role_first: true or false, not {bad!r}"
        # Knobs the CLI checks, and a body that is no JSON: 500s and tracebacks before (a bad
        # error_rate then failed every request after it).
        for knobs, said in (
            ({"error_rate": "x"}, "error_rate: a number from 0 to 1, not 'x'"),
            ({"error_rate": 1.5}, "error_rate: a number from 0 to 1, not 1.5"),
            ({"error_status": 200}, "error_status: a whole number from 400 to 599, not 200"),
            ({"error_status": "503"}, "error_status: a whole number from 400 to 599, not '503'"),
        ):
            r = httpx.post(f"{sim.url}/sim/config", json=knobs, timeout=5)
            assert (r.status_code, r.json()["error"]["message"]) == (400, said), r.text
        r = httpx.post(f"{sim.url}/sim/config", content=b"{nope", timeout=5)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json"), r.text
        ok = httpx.post(f"{sim.url}/sim/config", json={"ttft_ms": 1}, timeout=5)
        assert ok.status_code == 200 and ok.json()["role_first"] is False  # none of them stuck
        assert ok.json()["error_rate"] == 0.0 and ok.json()["error_status"] == 500
    finally:
        sim.proc.kill()


def test_bad_requests_are_openai_shaped_4xx_not_500s(tmp_path: Path) -> None:
    # A client's bad max_tokens was a plain-text 500 (int("x"), a negative count), which a
    # gateway counts against the upstream: five of them ejected it.
    sim = start_sim(tmp_path, "s", "eu", ["m"])
    try:
        url = f"{sim.url}/v1/completions"
        for value in ("x", -1, 0, 2.5, True, 10**31):
            r = httpx.post(url, json={"model": "m", "prompt": "hi", "max_tokens": value})
            err = r.json()["error"]
            assert (r.status_code, err["code"]) == (400, "invalid_parameter"), r.text
            assert err["message"].startswith("max_tokens must be a whole number"), err
        # max_completion_tokens first, as the model server reads them
        doc = {"model": "m", "prompt": "hi", "max_tokens": 9, "max_completion_tokens": 2}
        assert httpx.post(url, json=doc).json()["usage"]["completion_tokens"] == 2
        # Model cards' "created": when the sim started (it was 0, 1970 in a client's list).
        card = httpx.get(f"{sim.url}/v1/models").json()["data"][0]
        assert card["id"] == "m" and 0 < time.time() - card["created"] < 600, card
        r = httpx.get(f"{sim.url}/v1/nope")  # both were aiohttp's plain text
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_url"), r.text
        r = httpx.get(url)
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed"), r.text
        assert r.headers["allow"] == "POST"
        # Bodies json.loads refuses with other errors than JSONDecodeError: 500s before.
        for body in (b"\xff\xfe", b'{"n": ' + b"9" * 5000 + b"}", b"[" * 100_000):
            r = httpx.post(url, content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json"), r.text
        # A body its Content-Encoding does not decode: a 500 and a traceback before.
        said = {"content-type": "application/json", "content-encoding": "deflate"}
        r = httpx.post(url, content=b'{"model": "m"}', headers=said)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body"), r.text
        assert r.headers["connection"] == "close"  # the rest of it cannot be read
        assert "Traceback" not in (tmp_path / "sim-s.log").read_text()
    finally:
        sim.proc.kill()


def _held(port: int, tokens: int) -> socket.socket:
    """A completion of ``tokens`` sent on a raw socket, left unread: closing it leaves."""
    body = b'{"model": "m", "prompt": "hi", "max_tokens": %d}' % tokens
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    return s


def test_past_its_concurrency_a_request_waits_in_the_queue_then_429s(tmp_path: Path) -> None:
    """--max-waiting: vLLM queues what its batch cannot take, and says so in
    vllm:num_requests_waiting, which a gateway's routing weighs; the sim only refused."""
    sim = start_sim(
        tmp_path, "s", "eu", ["m"], "--tokens-per-s", "20", "--max-concurrency", "1",
        "--max-waiting", "1",
    )  # fmt: skip
    url = f"{sim.url}/v1/completions"
    try:
        # The first is held open until the 429 is seen: one of ten paced tokens (0.5 s) could
        # end on a loaded machine before the second was seen waiting.
        with concurrent.futures.ThreadPoolExecutor(1) as pool, _held(sim.port, 100_000) as first:
            eventually(lambda: sim.stats()["active"] == 1, what="the first to run")
            second = pool.submit(httpx.post, url, json={"model": "m", "max_tokens": 1}, timeout=30)
            eventually(lambda: sim.stats()["waiting"] == 1, what="the second to wait")
            scrape = httpx.get(f"{sim.url}/metrics").text
            assert "vllm:num_requests_waiting 1.0" in scrape, scrape
            third = httpx.post(url, json={"model": "m", "max_tokens": 1}, timeout=10)
            assert (third.status_code, third.json()["error"]["code"]) == (429, "at_capacity")
            assert not second.done(), "the second waits for the first's end"
            first.close()
            assert second.result().status_code == 200
        eventually(lambda: sim.stats()["active"] == 0, what="the first to end")
        assert sim.stats()["active"] == 0 and sim.stats()["waiting"] == 0
        # A client that leaves while it waits gives up its place, and leaks no slot.
        running = _held(sim.port, 100_000)
        eventually(lambda: sim.stats()["active"] == 1, what="a long one to run")
        with _held(sim.port, 1):
            eventually(lambda: sim.stats()["waiting"] == 1, what="another to wait")
        eventually(lambda: sim.stats()["waiting"] == 0, what="the one that left to go")
        running.close()
        eventually(lambda: sim.stats()["active"] == 0, what="the long one to end")
        r = httpx.post(url, json={"model": "m", "max_tokens": 1}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        sim.proc.kill()


def test_a_client_that_leaves_a_whole_answer_frees_its_place(tmp_path: Path) -> None:
    # The handler ran to its end without the client: /stats active, and the load a gateway
    # reads from /metrics, held for the whole generation (minutes at 100,000 tokens).
    sim = start_sim(tmp_path, "s", "eu", ["m"], "--tokens-per-s", "50")
    try:
        body = b'{"model": "m", "prompt": "hi", "max_tokens": 100000}'
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            eventually(lambda: sim.stats()["active"] == 1, what="the request to start")
        # The client left: so does its request, long before its 2,000 s of tokens.
        eventually(lambda: sim.stats()["active"] == 0, what="the request to end")
    finally:
        sim.proc.kill()


def test_clients_that_reset_mid_stream_are_counted_without_a_traceback(tmp_path: Path) -> None:
    # A write racing the client's reset raised aiohttp's "Cannot write to closing transport"
    # out of the handler: a 25-line traceback in the sim's log for one client gone (9 in about
    # 1,000 disconnects in a soak).
    sim = start_sim(tmp_path, "s", "eu", ["m"], "--tokens-per-s", "2000", "--ttft-ms", "0")
    try:
        body = b'{"model": "m", "prompt": "hi", "max_tokens": 5000, "stream": true}'
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
                s.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
                )
                assert s.recv(1 << 16)
                # A reset, not a FIN: close at once with the stream still coming.
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        eventually(lambda: sim.stats()["active"] == 0, what="every stream to end")
        assert sim.stats()["cancelled"] == 60
        assert "Traceback" not in (tmp_path / "sim-s.log").read_text()
    finally:
        sim.proc.kill()


@pytest.mark.serial  # it times the cut against aiohttp's own, a second later
def test_sigterm_cuts_a_stream_at_the_drain_timeout(tmp_path: Path) -> None:
    """aiohttp's own cut (its shutdown_timeout, 60 s by default) came after twice the wait:
    a slow stream held a stop for a minute, and a --drain-timeout of 5 s took 12."""
    sim = start_sim(
        tmp_path, "s", "eu", ["m"], "--tokens-per-s", "2", "--tokens", "100", "--drain-timeout", "1"
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got = b""
    with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, timeout=30) as r:
        parts = r.iter_raw()
        got += next(parts)  # the stream is in its handler
        t0 = time.monotonic()
        sim.proc.terminate()
        try:
            for part in parts:
                got += part
        except httpx.HTTPError:  # cut mid-body
            pass
        cut = time.monotonic() - t0  # the stream's end: the drain's cut, aiohttp's is 1 s later
        sim.proc.wait(timeout=30)
        took = time.monotonic() - t0
    assert sim.proc.returncode == 0
    assert 0.9 <= cut < 1.9, f"cut {cut:.1f} s after SIGTERM with --drain-timeout 1"
    assert took < 5, f"exited {took:.1f} s after SIGTERM"  # not aiohttp's 60 s, nor twice 1
    assert b"[DONE]" not in got  # cut, not finished: 100 tokens take 50 s


def test_a_waiting_client_that_leaves_as_its_turn_comes_passes_the_slot_on() -> None:
    """_queued's guard: a client cancelled in the moment between its turn being handed over
    (a running request's end) and its task running again holds a slot it will never use; it
    must hand that slot to the next one waiting, or the slot leaks and every later request
    waits behind a request that is gone. One cancelled while still waiting just leaves."""
    from backend.sim import SimBackend
    from backend.sim_config import SimConfig

    async def main() -> None:
        sim = SimBackend(SimConfig(models=("m",), max_concurrency=1, max_waiting=3))
        sim.stats.active = 1  # one request running
        first = asyncio.create_task(sim._queued())
        second = asyncio.create_task(sim._queued())
        third = asyncio.create_task(sim._queued())
        await asyncio.sleep(0)  # all three waiting
        assert len(sim._waiting) == 3
        third.cancel()  # still waiting: its place goes with it
        sim._release()  # the running one ends: its slot handed to the first...
        first.cancel()  # ...which leaves before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)  # the slot went on to the second
        with pytest.raises(asyncio.CancelledError):
            await third
        assert sim.stats.active == 1 and not sim._waiting  # the second's, nothing leaked
        sim._release()
        assert sim.stats.active == 0

    asyncio.run(main())
