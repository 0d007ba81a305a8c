"""``geogate sim-backend``: an OpenAI-compatible simulated model server.

Imports no torch: it shares the OpenAI shapes with the real model server through
``backend.shapes``.

For tests, demos and benchmarks: exact OpenAI response and chunk formats, vLLM's load metric
names, and knobs for time to first token, tokens per second, added network delay, error rate,
maximum concurrency (429 beyond it, or a queue first) and dying mid-stream. Built on
aiohttp.web with no per-token work beyond one small JSON dump, so it outruns the gateway it is
used to measure.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import time
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import generate_latest

from backend import protocol
from backend.shapes import SSE_DONE, Shape, error_body, model_card, sse
from backend.sim_audio import AUDIO_PATHS, transcribe
from backend.sim_config import SimConfig, max_tokens
from backend.sim_metrics import SimMetrics, SimStats

# A cut mid-event waits this long after the half it sent, so that the proxy has read and
# relayed it before the reset (a reset drops whatever the receiver has not read yet).
MID_EVENT_PAUSE_S = 0.05
WORDS = ("the", "quick", "geo", "gate", "routes", "every", "token", "to", "a", "nearby", "GPU")


def _error(status: int, message: str, type_: str, code: str, **headers: str) -> web.Response:
    return web.json_response(error_body(message, type_, code), status=status, headers=headers)


class SimBackend:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.started = int(time.time())  # its model cards' "created", as the model server's
        self.stats = SimStats()
        self.metrics = SimMetrics()
        self.rng = random.Random(cfg.seed)
        # The random clock's offsets, from a generator of their own (a seeded run's errors stay
        # put) and seeded apart from the other one.
        self.phase_rng = random.Random(None if cfg.seed is None else cfg.seed + 1)
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def app(self) -> web.Application:
        protocol.install()  # aiohttp's own answers (a malformed request's 400) in JSON too
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._seen])
        app["sim"] = self
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/echo", self.echo)
        for path in AUDIO_PATHS:
            app.router.add_post(path, transcribe)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prom)
        app.router.add_get("/stats", self.stats_view)
        app.router.add_post("/sim/config", self.reconfigure)
        return app

    @web.middleware
    async def _seen(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count each path as it arrived, unnormalised: a test can tell what a proxy sent."""
        self.stats.paths[request.raw_path] = self.stats.paths.get(request.raw_path, 0) + 1
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:  # aiohttp's are plain text
            code = "method_not_allowed" if exc.status == 405 else "unknown_url"
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            message = f"{request.method} {request.path}: {exc.reason}"
            return _error(exc.status, message, "invalid_request_error", code, **allow)
        except RequestPayloadError:  # a body its Content-Encoding does not decode: was a 500
            request.content.feed_eof()  # nothing more of it can be read (backend.server's way)
            coding = request.headers.get("content-encoding", "")[:40]
            message = f"request body does not decode as its Content-Encoding ({coding!r}) says"
            resp = _error(400, message, "invalid_request_error", "invalid_body")
            resp.force_close()
            return resp

    # --- plain endpoints ----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        owner = f"sim-{self.cfg.region}"
        data = [model_card(m, self.started, owner) for m in self.cfg.models]
        return web.json_response({"object": "list", "data": data})

    async def prom(self, request: web.Request) -> web.Response:
        self.stats.scrapes += 1
        self.metrics.running.set(self.stats.active)
        self.metrics.waiting.set(len(self._waiting))
        cap = self.cfg.max_concurrency
        self.metrics.kv.set(min(1.0, self.stats.active / cap) if cap else 0.0)
        registry = self.metrics.registry
        if names := request.query.getall("name[]", []):  # as prometheus_client's own handler
            registry = registry.restricted_registry(names)  # type: ignore[assignment]
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def stats_view(self, request: web.Request) -> web.Response:
        s = self.stats
        return web.json_response(
            {
                "region": self.cfg.region,
                "name": self.cfg.name,
                "requests": s.requests,
                "active": s.active,
                "waiting": len(self._waiting),
                "cancelled": s.cancelled,
                "completed": s.completed,
                "rejected": s.rejected,
                "last_headers": s.last_headers,
                "paths": s.paths,
                "scrapes": s.scrapes,
            }
        )

    async def reconfigure(self, request: web.Request) -> web.Response:
        """Change knobs at run time (slow a backend down mid-benchmark): {"ttft_ms": 200}."""
        try:
            changes = await request.json()
        except (ValueError, RecursionError):  # a traceback and a 500 before
            return _error(400, "body is not valid JSON", "invalid_request_error", "invalid_json")
        allowed = {
            "ttft_ms",
            "tokens_per_s",
            "clock",
            "delay_ms",
            "error_rate",
            "error_status",
            "role_first",
        }
        if not isinstance(changes, dict) or not set(changes) <= allowed:
            return _error(
                400, f"knobs: {', '.join(sorted(allowed))}", "invalid_request_error", "bad_knob"
            )
        try:
            self.cfg = replace(self.cfg, **changes)
        except ValueError as exc:  # SimConfig's own check
            return _error(400, str(exc), "invalid_request_error", "bad_knob")
        return web.json_response({k: getattr(self.cfg, k) for k in allowed})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "headers": dict(request.headers),
                "body_bytes": len(body),
                "region": self.cfg.region,
                "name": self.cfg.name,
            }
        )

    # --- generation ---------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.perf_counter()
        self.stats.requests += 1
        self.stats.last_headers = dict(request.headers)
        try:
            req: Any = json.loads(await request.read())
        # ValueError: bad JSON, bad UTF-8, an integer past 4,300 digits; RecursionError: too
        # deep. A 500 for any of them is counted by a gateway against this server.
        except (ValueError, RecursionError):
            return _error(
                400, "request body is not valid JSON", "invalid_request_error", "invalid_json"
            )
        if not isinstance(req, dict):
            return _error(
                400, "request body must be a JSON object", "invalid_request_error", "invalid_json"
            )
        model = req.get("model")
        if model not in self.cfg.models:
            return _error(
                404,
                f"model {model!r} does not exist here",
                "invalid_request_error",
                "model_not_found",
            )
        cap = self.cfg.max_concurrency
        if cap and self.stats.active >= cap and len(self._waiting) >= self.cfg.max_waiting:
            self.stats.rejected += 1
            return _error(
                429,
                "server is at capacity; retry shortly",
                "rate_limit_error",
                "at_capacity",
                **{"Retry-After": "1"},
            )
        if self.cfg.error_rate and self.rng.random() < self.cfg.error_rate:
            return _error(self.cfg.error_status, "simulated failure", "server_error", "simulated")
        try:
            n = max_tokens(req, self.cfg.default_tokens)
        except ValueError as exc:  # was a 500 (int("x")), which a gateway counts as a failure
            return _error(400, str(exc), "invalid_request_error", "invalid_parameter")
        if cap and self.stats.active >= cap:
            await self._queued()  # back with a running one's slot
        else:
            self.stats.active += 1
        try:
            if self.cfg.delay_ms:
                await asyncio.sleep(self.cfg.delay_ms / 1000)
            if req.get("stream"):
                return await self._stream(request, req, chat, model, n, t0)
            return await self._whole(req, chat, model, n, t0)
        finally:
            self._release()

    async def _queued(self) -> None:
        """Wait for a running request to end (``--max-waiting``): its slot is handed over, not
        freed, so that a request arriving meanwhile cannot take it first. The first token's
        time counts from the request's arrival, as vLLM's does."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:  # the client left
            if turn.done() and not turn.cancelled():
                self._release()  # handed the slot as it left: the next one's
            elif turn in self._waiting:  # not already passed over by a _release in between
                self._waiting.remove(turn)
            raise

    def _release(self) -> None:
        """A running request's end: its slot to the first still waiting, else free."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.stats.active -= 1

    def _token(self, i: int) -> str:
        return ("" if i == 0 else " ") + WORDS[i % len(WORDS)]

    def _prompt_tokens(self, req: dict[str, Any]) -> int:
        if "messages" in req:
            text = " ".join(
                str(m.get("content", "")) for m in req["messages"] if isinstance(m, dict)
            )
        else:
            text = str(req.get("prompt", ""))
        return max(1, len(text.split()))

    def _origin(self, start: float) -> float:
        """Where a response's token clock starts: ``start``, or with the random clock a random
        share of one token interval later (its own generator: a seeded run's errors stay put)."""
        rate = self.cfg.tokens_per_s
        if self.cfg.clock == "random" and rate:
            return start + self.phase_rng.random() / rate
        return start

    def _due(self, i: int, origin: float) -> float:
        """When token i is due: TTFT for the first, then 1/tokens_per_s apart (with the
        lockstep clock, at the first decode step on or after that)."""
        due = origin + self.cfg.ttft_ms / 1000
        rate = self.cfg.tokens_per_s
        if rate:
            due += i / rate
            if self.cfg.clock == "lockstep":  # steps on one grid for every stream
                due = math.ceil(due * rate) / rate
        return due

    async def _pace(self, i: int, origin: float) -> None:
        """Sleep until token i is due."""
        delay = self._due(i, origin) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    def _usage(self, req: dict[str, Any], n: int) -> dict[str, int]:
        p = self._prompt_tokens(req)
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

    async def _whole(
        self, req: dict[str, Any], chat: bool, model: str, n: int, t0: float
    ) -> web.Response:
        origin = self._origin(time.perf_counter())
        await self._pace(n - 1 if n else 0, origin)
        text = "".join(self._token(i) for i in range(n))
        body = Shape(model, chat).whole(text, "length", self._usage(req, n))
        self._record(req, n, t0, self._due(0, origin))
        self.stats.completed += 1
        return web.json_response(body, headers={"x-sim-region": self.cfg.region})

    def _record(self, req: dict[str, Any], n: int, t0: float, first: float) -> None:
        """The request's figures, as a model server exports them; ``first``: when its first
        token was due."""
        m = self.metrics
        m.ttft.observe(first - t0)
        end = time.perf_counter()
        m.e2e.observe(end - t0)
        if n > 1:  # the pace after the first token, as the model server measures it
            m.itl.observe((end - first) / (n - 1))
        m.prompt.inc(self._prompt_tokens(req))
        m.gen.inc(n)

    async def _stream(
        self, request: web.Request, req: dict[str, Any], chat: bool, model: str, n: int, t0: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-sim-region": self.cfg.region,
            }
        )
        opts = req.get("stream_options") or {}
        usage = isinstance(opts, dict) and opts.get("include_usage") is True
        shape = Shape(model, chat, usage)

        def event(doc: dict[str, Any]) -> bytes:
            stamp = f": t={time.time():.6f}\n".encode() if self.cfg.stamp else b""
            return stamp + sse(doc)

        origin = self._origin(time.perf_counter())
        # A chat stream's role chunk goes with the first token, as vLLM sends it (after the
        # prefill, --ttft-ms): sent at once, a proxy would take it for the first token.
        role = shape.chunk(None, None, role=True) if chat else None
        try:
            await resp.prepare(request)
            if role is not None and self.cfg.role_first:
                await resp.write(event(role))
                role = None
            for i in range(n):
                await self._pace(i, origin)
                if self.cfg.abort_after and i >= self.cfg.abort_after:
                    assert request.transport is not None
                    if self.cfg.abort_mid_event:  # sent, and read there, before the reset
                        half = event(shape.chunk(self._token(i), None))
                        await resp.write(half[: len(half) // 2])
                        await asyncio.sleep(MID_EVENT_PAUSE_S)
                    request.transport.abort()  # die mid-stream, as a crashed server would
                    return resp
                head = b"" if role is None else event(role)  # stamped as it is sent
                role = None
                await resp.write(head + event(shape.chunk(self._token(i), None)))
            head = b"" if role is None else event(role)
            await resp.write(head + event(shape.chunk(None, "length")))
            if usage:
                await resp.write(sse(shape.usage_chunk(self._usage(req, n))))
            await resp.write(SSE_DONE)
            await resp.write_eof()
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        except ConnectionResetError:  # the client left as a write went out: counted, no
            self.stats.cancelled += 1  # aiohttp traceback ("Cannot write to closing transport")
            return resp
        self._record(req, n, t0, self._due(0, origin))
        self.stats.completed += 1
        return resp
