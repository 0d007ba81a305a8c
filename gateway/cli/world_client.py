"""``geogate world``'s client: one streaming chat completion as a client site sends it, timed
to its first content chunk (TTFT) and its last (total), and the model backend's own TTFT
measured the same way before the run (the floor of ``--backend model``)."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.cli import world_report as wr
from gateway.cli.errors import CLIError
from gateway.cli.procs import log_tail, route_field
from gateway.http.headers import ROUTE_HEADER

SEND_TIMEOUT_S = 5.0  # an event's request to a local process

MODEL = "world-llm"
MAX_TOKENS = 8
REQUEST_TIMEOUT_S = 30.0
BACKEND_TTFT_SAMPLES = 5


@dataclass(frozen=True)
class Site:
    """A client site: where the world's requests come from."""

    name: str
    country: str
    continent: str
    lat: float
    lon: float


def _has_content(line: bytes) -> bool:
    """A chunk with text in it (the first chunk only carries the role)."""
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        return bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))
    return False


async def ask(
    url: str, region: str, phase: str, topo: str, site: Site, t_event: float
) -> wr.Sample:
    """One streaming chat completion; TTFT is the first content chunk, not the headers."""
    body = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "messages": [{"role": "user", "content": f"hello from {site.name}"}],
    }
    t0 = time.perf_counter()
    ttft = None
    ok = False
    conn = aiohttp.TCPConnector(force_close=True)
    try:
        async with (
            aiohttp.ClientSession(
                connector=conn, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            ) as s,
            s.post(f"{url}/v1/chat/completions", json=body) as r,
        ):
            if topo == "geogate":
                region = route_field(r.headers.get(ROUTE_HEADER, ""), "region")
            async for line in r.content:
                if ttft is None and line.startswith(b"data: {") and _has_content(line):
                    ttft = (time.perf_counter() - t0) * 1000
                if line.startswith(b"data: [DONE]"):
                    ok = r.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        ok = False
    total = (time.perf_counter() - t0) * 1000
    return wr.Sample(
        phase,
        topo,
        site.name,
        site.continent,
        t0 - t_event,
        ok,
        ttft,
        total if ok else None,
        region,
    )


async def backend_ttft_ms(
    url: str, site: Site, n: int = BACKEND_TTFT_SAMPLES, log: Path | None = None
) -> float:
    """The median TTFT of ``n`` requests straight to a backend on loopback (after one not
    counted): what the backend itself takes, with no network in front of it. ``log``: the
    backend's output, named in the error if it never answers."""
    await ask(url, "-", "warm-up", "backend", site, 0.0)
    samples = [await ask(url, "-", "backend", "backend", site, 0.0) for _ in range(n)]
    ttfts = [x.ttft_ms for x in samples if x.ok and x.ttft_ms is not None]
    if not ttfts:
        see = "" if log is None else f"; {log_tail(log)}"
        raise CLIError(f"world: {url}: no streamed answer with content from the backend{see}")
    return statistics.median(ttfts)


def send_json(url: str, body: dict[str, object], method: str = "POST", token: str = "") -> None:
    """An event's request to a process of the world (a sim's config, a gateway's drain): one
    line naming it when the process does not take it (it died, or refused), not a traceback
    in the middle of the run."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=SEND_TIMEOUT_S):
            pass
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise CLIError(f"world: {method} {url} failed: {exc}") from None
