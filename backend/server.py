"""The model server's HTTP API (aiohttp.web): OpenAI endpoints, /health, /ready, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from backend import protocol
from backend.api import check, tokenize
from backend.engine import Engine, Event, Sequence
from backend.errors import (
    BackendError,
    BodyTooLarge,
    InvalidParameter,
    ModelNotFound,
    shown,
)
from backend.loader import Loaded
from backend.metrics import BackendMetrics
from backend.sampling import SamplingParams
from backend.shapes import Shape, error_body, model_card

log = logging.getLogger("geogate.backend")
MAX_BODY_BYTES = 8 * 1024 * 1024
LOOP_PARSE_MAX_BYTES = 64 * 1024  # larger bodies are parsed off the event loop
WARM_UP: web.AppKey[asyncio.Task[None]] = web.AppKey("warm_up")  # held: tasks are weak refs


class Undecodable(InvalidParameter):
    """A body that does not decode: the connection cannot carry another request."""


def _error(err: BackendError) -> web.Response:
    resp = web.json_response(err.body(), status=err.status, headers=err.headers)
    if isinstance(err, Undecodable):
        resp.force_close()
    return resp


def _sse(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:  # aiohttp's own is plain text, and a 500 here
        raise BodyTooLarge(
            f"request body is over this server's limit of {MAX_BODY_BYTES} bytes"
        ) from None
    except RequestPayloadError:  # a body its Content-Encoding does not decode: was a 500
        # What is left of it cannot be read: aiohttp drained it after the answer, raised the
        # same error there and logged it as an "Unhandled exception", 30 lines of traceback.
        # Nothing is left to drain, and the connection closes after the answer (_error).
        request.content.feed_eof()
        coding = request.headers.get("content-encoding", "")
        raise Undecodable(
            f"request body does not decode as its Content-Encoding ({coding[:40]!r}) says; "
            "send it as it is encoded, or without the header"
        ) from None


async def _parse(raw: bytes) -> Any:
    """The body's JSON, or an OpenAI-shaped 400. A large body is parsed in a thread: 8 MB
    take 0.14 s, which on the loop held /health and every stream."""
    try:
        if len(raw) > LOOP_PARSE_MAX_BYTES:
            return await asyncio.to_thread(json.loads, raw)
        return json.loads(raw)
    # ValueError: JSONDecodeError, and an integer past Python's 4,300 digits; RecursionError:
    # arrays nested too deep. Both were 500s, which a gateway counts against this server.
    except (ValueError, RecursionError) as exc:
        raise InvalidParameter(f"request body is not valid JSON: {exc}") from None


class BackendServer:
    def __init__(
        self, loaded: Loaded, engine: Engine, metrics: BackendMetrics, drain_s: float
    ) -> None:
        self.m = loaded
        # The model card's "created": when this server took the model up (OpenAI's is when the
        # model was made; a constant 0 read as 1970 in clients that show it).
        self.created = int(time.time())
        self.engine = engine
        self.metrics = metrics
        self.drain_s = drain_s  # on SIGTERM, what runs past this is cut (_cut_at_drain_end)
        self.serving: set[asyncio.Task[Any]] = set()  # the generations' handler tasks
        self.ready = False
        self.failure: str | None = None  # why the warm-up failed; the CLI exits with it
        self.stopping = False  # a signal (or a failed warm-up) began the drain
        self.cut_now = False  # a second signal cut what was running

    def app(self) -> web.Application:
        protocol.install()  # aiohttp's own answers (a malformed request's 400) in JSON too
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_openai_errors])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)  # a name may hold "/"
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready_view)
        app.router.add_get("/metrics", self.prom)
        app.on_startup.append(self._take_signals)
        app.on_startup.append(self._warm_up)
        app.on_shutdown.append(self._cut_at_drain_end)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _take_signals(self, app: web.Application) -> None:
        """SIGTERM and SIGINT (Ctrl-C) are this server's, in place of run_app's: its handler
        raised GracefulExit at a second signal too, inside its own cleanup, which stopped that
        cleanup half done: every stream cut, exit status 1, no "stopped", and the engine
        thread's traceback as it handed tokens to a closed event loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first signal drains (run_app's way out); a second cuts what still runs at
        once, as uvicorn and gunicorn do, and the stop goes on as a drained one."""
        if not self.stopping:
            self._stop()  # raises: run_app stops, as it did
        if not self.cut_now:
            self.cut_now = True
            n = len(self.serving)
            log.warning("%s during the drain: cutting now %d request(s) still running", sig.name, n)
        self._cut()

    def _stop(self) -> NoReturn:
        """Begin the drain: run_app's own way out (its SIGTERM handler raises the same)."""
        self.stopping = True
        raise web.GracefulExit()

    def _cut(self) -> None:
        for task in self.serving:
            task.cancel()

    async def _warm_up(self, app: web.Application) -> None:
        """One real generation before /ready says yes: first-call costs are paid here."""
        self.engine.dispatch = dispatcher(asyncio.get_running_loop())
        self.engine.start()

        app[WARM_UP] = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            ids = self.m.tokenizer("hello", add_special_tokens=True)["input_ids"]
            q: asyncio.Queue[Event] = asyncio.Queue()
            params = SamplingParams(max_tokens=2, temperature=0)
            # Not observed: a fresh server's /metrics counted it as a request (TTFT, tokens).
            seq = Sequence(ids, params, q.put_nowait, observed=False)
            self.engine.submit(seq)
            while (end := await q.get()).kind == "token":
                pass
        except Exception as exc:  # the tokenizer or submit: no generation either
            log.exception("warm-up failed")
            end = Event("error", text=str(exc))
        if end.kind == "finish":
            self.ready = True
            log.info("warm-up generation done: ready")
            return
        # A server that cannot generate stops rather than sit unready behind a /health that
        # says ok: a supervisor restarts it and shows why, and whoever waits for /ready
        # (geogate's own launchers watch the process) learns at once instead of timing out.
        why = end.text.removeprefix("generation failed: ").splitlines()[:1] or ["no reason"]
        self.failure = f"warm-up generation failed: {why[0]}; the server stops"
        log.error("%s", self.failure)
        asyncio.get_running_loop().call_soon(self._stop)

    async def _cut_at_drain_end(self, app: web.Application) -> None:
        """At the drain's end, cancel every generation still running. aiohttp's own cut
        (shutdown_timeout) cancels the request's body reader, which a handler waiting for
        tokens or writing a stream never awaits; it then waits as long again, and runs on:
        --drain-timeout 1 exited after 3.5 s with the stream still going."""
        asyncio.get_running_loop().call_later(self.drain_s, self._cut)

    async def _shutdown(self, app: web.Application) -> None:
        await asyncio.to_thread(self.engine.stop)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ready_view(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=503, text="warming up")
        return web.Response(text="ready")

    async def prom(self, request: web.Request) -> web.Response:
        names = request.query.getall("name[]", [])  # only those samples, as prometheus_client's
        return web.Response(body=self.metrics.render(names), content_type="text/plain")

    def _card(self) -> dict[str, Any]:
        return model_card(self.m.name, self.created, "geogate", max_model_len=self.m.context_len)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card()]})

    async def model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}: the SDKs' models.retrieve, as the gateway answers it."""
        name = request.match_info["model"]
        if name != self.m.name:
            return _error(
                ModelNotFound(  # quoted as JSON writes them, as the chat's 404 has them
                    f"model {shown(name)} is not served here; this server serves "
                    f"{json.dumps(self.m.name)} (GET /v1/models)",
                    param="model",
                )
            )
        return web.json_response(self._card())

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            return await self._generate_in(request, chat)
        finally:
            self.serving.discard(task)

    async def _generate_in(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            raw = await _read(request)
            arrived = time.perf_counter()  # TTFT from here: parsing and tokenizing, no upload
            body = await _parse(raw)
            # The cheap checks and the queue's room first, on the loop; then the chat
            # template and the tokenizer in a thread: on a prompt of megabytes they take
            # seconds, which on the loop stalled /health (the gateway's probe gives up after
            # 1 s and ejects the backend) and every stream.
            checked = check(body, self.m.name, self.m.context_len, chat)
            self.engine.reserve()  # its place is held while the thread tokenizes
            try:
                p = await asyncio.to_thread(tokenize, checked, self.m.tokenizer, self.m.context_len)
            except BaseException:  # refused by the tokenizer's checks, or the client left
                self.engine.unreserve()
                raise
            q: asyncio.Queue[Event] = asyncio.Queue()
            seq = Sequence(p.prompt_ids, p.params, q.put_nowait, t_submit=arrived)
            self.engine.submit(seq, reserved=True)
        except BackendError as err:
            return _error(err)
        except Exception:  # a bug (tokenizer, template): still an OpenAI-shaped answer
            log.exception("unexpected error preparing a request")
            return _error(BackendError("internal error in the model server; see its log"))
        shape = Shape(self.m.name, chat, p.stream and p.include_usage)
        try:
            if p.stream:
                return await self._stream(request, q, shape, p.include_usage)
            return await self._whole(q, shape)
        finally:
            # Normal end, client gone (the handler is cancelled) or write failure: in every
            # case the engine drops the sequence at its next step.
            seq.cancelled = True

    async def _whole(self, q: asyncio.Queue[Event], shape: Shape) -> web.Response:
        parts = []
        while (e := await q.get()).kind == "token":
            parts.append(e.text)
        if e.kind == "error":
            return _error(BackendError(e.text))
        usage = _usage(e)
        return web.json_response(shape.whole("".join(parts), e.finish_reason or "stop", usage))

    async def _stream(
        self, request: web.Request, q: asyncio.Queue[Event], shape: Shape, include_usage: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        # The role chunk goes with the first token, in one write, as vLLM sends it: not at once,
        # before the prompt is processed, where a proxy would take it for the first token.
        role = _sse(shape.chunk(None, None, role=True)) if shape.chat else b""
        try:
            # Inside: a client gone before the head went out was an ERROR with a traceback.
            await resp.prepare(request)
            while (e := await q.get()).kind == "token":
                await resp.write(role + _sse(shape.chunk(e.text, None)))
                role = b""
            if e.kind == "error":
                await resp.write(role + _sse(BackendError(e.text).body()))
                return resp
            await resp.write(role + _sse(shape.chunk(None, e.finish_reason)))
            if include_usage:
                await resp.write(_sse(shape.usage_chunk(_usage(e))))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client left
            pass  # the engine drops the sequence (_generate's finally); nothing to log
        return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (an unknown route, a wrong method) as OpenAI-shaped JSON, as
    every other error here: clients parse the body, and aiohttp's is plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and successes raised as exceptions: as they are
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        elif isinstance(exc, web.HTTPNotFound):
            message = f"no such endpoint: {request.method} {request.path}"
        else:
            message = f"{exc.status} {exc.reason}"
        type_ = "invalid_request_error" if exc.status < 500 else "server_error"
        code = exc.reason.lower().replace(" ", "_")  # "method_not_allowed", "not_found"
        return web.json_response(
            error_body(message, type_, code), status=exc.status, headers=headers
        )


def dispatcher(loop: asyncio.AbstractEventLoop) -> Callable[[list[tuple[Sequence, Event]]], None]:
    """The engine thread's way to hand one step's events to the event loop (one wake-up a
    step). Once the loop is closed nobody waits for them: dropped, where the engine thread
    died with a traceback (RuntimeError: Event loop is closed)."""

    def dispatch(events: list[tuple[Sequence, Event]]) -> None:
        try:
            loop.call_soon_threadsafe(_deliver, events)
        except RuntimeError:
            if not loop.is_closed():
                raise

    return dispatch


def _deliver(events: list[tuple[Sequence, Event]]) -> None:
    """On the event loop: hand each event of one engine step to its request."""
    for seq, event in events:
        seq.emit(event)


def _usage(e: Event) -> dict[str, int]:
    return {
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "total_tokens": e.prompt_tokens + e.completion_tokens,
    }
