"""The ``/v1/*`` proxy: read and check the body, locate the client, route, forward with
failover before the first byte, stream the answer back chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from gateway.asgi import Message, Receive, Scope, Send, header, header_values, send_error
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    ModelNotFound,
    NoHealthyUpstream,
    RouteNotFound,
    UpstreamBusy,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.headers import (
    ROUTE_HEADER,
    client_response_headers,
    request_id,
    upstream_request_headers,
)
from gateway.router import Candidate, Decision, Outcome, RequestFacts, route
from gateway.runtime import Runtime, access_log, log
from geodb.clientip import client_ip, is_trusted
from geodb.location import Location

# Statuses that mean "this upstream cannot take it now, another may": try the next candidate.
RETRYABLE_STATUS = frozenset({429, 502, 503})
# 429 is load, not sickness: it must not eject a backend that is merely full.
NOT_A_HEALTH_FAILURE = frozenset({429})
NO_CANDIDATE_RETRY_AFTER_S = 5  # Retry-After on a 503: about two health-probe intervals
SSE_TYPE = b"text/event-stream"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


class StreamAborted(Exception):
    """The upstream failed after bytes reached the client: the response must be cut."""


@dataclass(slots=True)
class _Failure:
    upstream: str
    kind: str  # refused, reset, timeout, status_503, ...
    detail: str
    retry_after: str | None = None

    def describe(self) -> str:
        return f"{self.upstream} ({self.detail})"


@dataclass(slots=True)
class _Log:
    status: int = 0
    upstream: str = "-"
    attempts: int = 0
    client: str = "-"
    country: str = "-"


def _model_of(body: bytes) -> str:
    try:
        doc: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f'{exc.colno}); send a JSON object such as {{"model": "...", "messages": [...]}}'
        ) from None
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text; send JSON encoded as UTF-8") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        raise BadRequest(
            'request body has no "model" field (a non-empty string); name the model to use — '
            "GET /v1/models lists them"
        )
    return model


class Proxy:
    """ASGI app for ``/v1/*`` requests that carry a body."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        rid = request_id(header(scope, b"x-request-id"))
        extra = [(b"x-request-id", rid.encode())]
        entry = _Log()
        region = "-"
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["method"] not in BODY_METHODS:
                raise RouteNotFound(
                    f"{scope['method']} {scope['path']} is not served by this gateway; "
                    "model calls are POST requests (GET /v1/models lists the models)"
                )
            body = await self._read_body(scope, receive)
            model = _model_of(body)
            loc, peer_trusted = self._locate(scope, entry)
            now = time.monotonic()
            decision = route(
                RequestFacts(model, loc), self.rt.store.snapshot(now), self.rt.policy, self.rt.rng
            )
            self._check(decision, model, loc)
            if decision.chosen:
                region = decision.chosen.upstream.region
            self.rt.budget.record_request(now)
            entry.status = await self._forward(
                scope, receive, tracked, body, decision, rid, entry, peer_trusted, t0
            )
        except GatewayError as err:
            entry.status = err.status
            await send_error(send, err, extra)
        except ClientGone:
            entry.status = 499  # nginx's "client closed request"
        except StreamAborted:
            entry.status = 502
            raise  # the ASGI server resets the stream: the client sees a truncated response
        except Exception:
            # A bug, not a condition we know: log it with the request id, and if nothing
            # reached the client yet, still answer in the shape API clients understand.
            entry.status = 500
            log.exception("unexpected error in request %s", rid)
            if started:
                raise
            await send_error(
                send,
                GatewayError(
                    f"internal error in the gateway (request id {rid}); retry, and report the "
                    "request id if it persists"
                ),
                extra,
            )
        finally:
            elapsed = time.perf_counter() - t0
            m = self.rt.metrics
            m.requests.labels(str(entry.status), region).inc()
            m.duration.labels(region).observe(elapsed)
            if self.rt.config.server.access_log:
                access_log.info(
                    "rid=%s %s %s status=%d upstream=%s attempts=%d ms=%.1f client=%s country=%s",
                    rid,
                    scope["method"],
                    scope["path"],
                    entry.status,
                    entry.upstream,
                    entry.attempts,
                    elapsed * 1000,
                    entry.client,
                    entry.country,
                )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.rt.config.server.max_body_bytes
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large(None, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _too_large(size: int | None, limit: int) -> BodyTooLarge:
        got = f"{size} bytes" if size is not None else "larger"
        return BodyTooLarge(
            f"request body is {got}, over this gateway's limit of {limit} bytes "
            "(server.max_body_bytes); send a shorter request or ask the operator to raise it"
        )

    def _locate(self, scope: Scope, entry: _Log) -> tuple[Location, bool]:
        peer = scope.get("client")
        peer_host = peer[0] if peer else None
        ip = client_ip(peer_host, header_values(scope, b"x-forwarded-for"), self.rt.trusted)
        loc = self.rt.geo.locate(ip)
        entry.client = str(ip) if ip else "-"
        entry.country = loc.country or "-"
        self.rt.metrics.by_country.labels(loc.country or "unknown", str(loc.source)).inc()
        return loc, peer_host is not None and is_trusted(peer_host, self.rt.trusted)

    def _check(self, decision: Decision, model: str, loc: Location) -> None:
        if decision.outcome is Outcome.MODEL_NOT_FOUND:
            empty = [
                u.id
                for u in self.rt.store.config.upstreams
                if model in u.models and u.discovery != "none"
            ]
            if empty:
                raise NoHealthyUpstream(
                    f"no upstream can serve model {model!r} now: {', '.join(empty)} resolve "
                    f"to no addresses (DNS discovery). Retry in {NO_CANDIDATE_RETRY_AFTER_S} s",
                    headers={"Retry-After": str(NO_CANDIDATE_RETRY_AFTER_S)},
                )
            raise ModelNotFound(
                f"model {model!r} is not served by any upstream of this gateway; "
                "GET /v1/models lists the models available"
            )
        if decision.outcome is Outcome.NO_CANDIDATE:
            why = sorted({e.reason for e in decision.excluded})
            rule = (
                f" residency rule {decision.residency} keeps clients from "
                f"{loc.country or loc.continent} in its regions, and none there can serve."
                if decision.residency
                else ""
            )
            raise NoHealthyUpstream(
                f"no upstream can serve model {model!r} now ({', '.join(why)}).{rule} "
                f"Retry in {NO_CANDIDATE_RETRY_AFTER_S} s",
                headers={"Retry-After": str(NO_CANDIDATE_RETRY_AFTER_S)},
            )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        decision: Decision,
        rid: str,
        entry: _Log,
        peer_trusted: bool,
        t0: float,
    ) -> int:
        """Run the attempts while watching for the client to leave; cancel them if it does."""
        work = asyncio.ensure_future(
            self._attempts(scope, send, body, decision, rid, entry, peer_trusted, t0)
        )
        watch = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                raise ClientGone
            watch.cancel()
        return work.result()

    async def _attempts(
        self,
        scope: Scope,
        send: Send,
        body: bytes,
        decision: Decision,
        rid: str,
        entry: _Log,
        peer_trusted: bool,
        t0: float,
    ) -> int:
        rt = self.rt
        cfg = rt.config
        peer = scope.get("client")
        headers = upstream_request_headers(
            scope["headers"],
            client=entry.client if entry.client != "-" else (peer[0] if peer else None),
            peer_trusted=peer_trusted,
            scheme=scope.get("scheme", "http"),
            rid=rid,
        )
        target = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        failures: list[_Failure] = []
        candidates = decision.order[: cfg.retry.max_attempts]
        for i, cand in enumerate(candidates):
            if i > 0:
                if not rt.budget.try_retry(time.monotonic()):
                    rt.metrics.budget_exhausted.inc()
                    break
                rt.metrics.retries.inc()
            entry.attempts = i + 1
            status = await self._attempt(
                cand, i, decision, scope["method"], target, headers, body, send, rid, failures, t0
            )
            if status is not None:
                entry.upstream = cand.upstream.id
                return status
        raise self._final_error(failures, decision)

    async def _attempt(
        self,
        cand: Candidate,
        index: int,
        decision: Decision,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        rid: str,
        failures: list[_Failure],
        t0: float,
    ) -> int | None:
        """One upstream try. None: failed before any byte reached the client, try the next."""
        rt = self.rt
        t = rt.config.timeouts
        uid = cand.upstream.id
        store = rt.store
        resp: aiohttp.ClientResponse | None = None
        done = False
        store.acquire(uid)
        try:
            try:
                async with asyncio.timeout(t.first_byte_s):
                    resp = await rt.http().request(
                        method,
                        URL(cand.upstream.url + target, encoded=True),
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                    )
                    if resp.status in RETRYABLE_STATUS:
                        ok = resp.status in NOT_A_HEALTH_FAILURE
                        self._fail(
                            failures, uid, f"status_{resp.status}", f"HTTP {resp.status}", ok
                        )
                        failures[-1].retry_after = resp.headers.get("Retry-After")
                        return None
                    first = await resp.content.readany()
            except TimeoutError:
                self._fail(failures, uid, "timeout", f"no first byte in {t.first_byte_s:g} s")
                return None
            except aiohttp.ClientConnectorError as exc:
                self._fail(failures, uid, "refused", f"connect failed: {exc.os_error.strerror}")
                return None
            except (aiohttp.ClientError, OSError) as exc:
                self._fail(failures, uid, "reset", f"connection lost: {type(exc).__name__}")
                return None
            rt.metrics.attempts.labels(uid, "ok").inc()
            extra = [
                (b"x-request-id", rid.encode()),
                (ROUTE_HEADER.encode(), self._route_header(decision, cand, index).encode()),
            ]
            await self._stream(resp, first, extra, send, uid, cand.upstream.region, t0)
            done = True
            store.record_result(uid, resp.status < 500, time.monotonic())
            return resp.status
        finally:
            store.release(uid)
            if resp is not None:
                # A response read to the end goes back to the pool; anything else closes the
                # connection, which is how the upstream learns that nobody is listening.
                if done and resp.content.at_eof():
                    resp.release()
                else:
                    resp.close()

    def _fail(
        self, failures: list[_Failure], uid: str, kind: str, detail: str, ok: bool = False
    ) -> None:
        failures.append(_Failure(uid, kind, detail))
        self.rt.metrics.attempts.labels(uid, kind).inc()
        self.rt.store.record_result(uid, ok, time.monotonic())

    @staticmethod
    def _route_header(decision: Decision, cand: Candidate, index: int) -> str:
        reason = decision.reason if index == 0 else "failover"
        h = f"region={cand.upstream.region}; upstream={cand.upstream.id}; reason={reason}"
        if decision.residency:
            h += f"; residency={decision.residency}"
        return h + (f"; attempts={index + 1}" if index else "")

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        first: bytes,
        extra: list[tuple[bytes, bytes]],
        send: Send,
        uid: str,
        region: str,
        t0: float,
    ) -> None:
        t = self.rt.config.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total_s - (time.perf_counter() - t0)
        headers = client_response_headers(resp.raw_headers, extra)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        self.rt.metrics.first_byte.labels(region).observe(time.perf_counter() - t0)
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        try:
            # One timeout object re-armed per chunk: cheaper than a wait_for task per chunk.
            async with asyncio.timeout(None) as tmo:
                while True:
                    tmo.reschedule(min(loop.time() + t.idle_s, deadline))
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            cause = "timeout" if isinstance(exc, TimeoutError) else "upstream_error"
            await self._abort(resp, send, uid, cause)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _abort(self, resp: aiohttp.ClientResponse, send: Send, uid: str, cause: str) -> None:
        """The upstream failed mid-response. SSE clients get a final error event they can act
        on (the OpenAI SDKs raise it); other clients get a reset stream, never a response that
        looks complete but is not."""
        self.rt.metrics.stream_aborted.labels(cause).inc()
        self.rt.store.record_result(uid, False, time.monotonic())
        what = "stopped answering" if cause == "timeout" else "failed"
        message = (
            f"upstream {uid} {what} in the middle of the response; the output is incomplete — "
            "retry the request"
        )
        if resp.headers.get("Content-Type", "").encode().startswith(SSE_TYPE):
            err = UpstreamFailed(message)
            err.code = "upstream_stream_interrupted"
            event = b"data: " + json.dumps(err.body()).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        raise StreamAborted(message)

    def _final_error(self, failures: list[_Failure], decision: Decision) -> GatewayError:
        tried = ", ".join(f.describe() for f in failures)
        more = len(decision.order) - len(failures)
        tail = f"; {more} more candidate(s) not tried (retry limit/budget)" if more > 0 else ""
        if decision.reason == "panic":
            # Every allowed upstream was already known to be down; we tried them anyway in
            # case health checks lagged. That is "nothing healthy", not a surprise failure.
            rule = f" (residency rule {decision.residency})" if decision.residency else ""
            return NoHealthyUpstream(
                f"no healthy upstream is allowed for this client{rule}; tried the unhealthy "
                f"ones anyway: {tried}. Retry in {NO_CANDIDATE_RETRY_AFTER_S} s",
                headers={"Retry-After": str(NO_CANDIDATE_RETRY_AFTER_S)},
            )
        if failures and all(f.kind == "status_429" for f in failures):
            waits = [f.retry_after for f in failures]
            after = max((int(w) for w in waits if w is not None and w.isdigit()), default=1)
            return UpstreamBusy(
                f"every upstream tried is at capacity: {tried}{tail}. Retry after {after} s",
                headers={"Retry-After": str(after)},
            )
        if failures and failures[-1].kind == "timeout":
            return UpstreamTimeout(
                f"upstream timed out: {tried}{tail}. Retry; for very long prompts the operator "
                "can raise timeouts.first_byte_s"
            )
        return UpstreamFailed(f"upstream request failed: {tried}{tail}. Retry the request")
