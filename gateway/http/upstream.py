"""The ``/v1/*`` proxy, back half: try the decision's candidates in order, failing over only
before any byte reached the client and within the retry budget; stream the answer back chunk
by chunk; cut it cleanly when the upstream fails mid-way; cancel it when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
from yarl import URL

from gateway.client import CLIENT_ERRORS, Failure, FailureKind, classify
from gateway.defaults import NO_CANDIDATE_RETRY_AFTER_S
from gateway.errors import (
    GatewayError,
    NoHealthyUpstream,
    StreamInterrupted,
    UpstreamBusy,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.http.asgi import Receive, Send
from gateway.http.errors import error_body
from gateway.http.exchange import Exchange
from gateway.http.headers import ROUTE_HEADER, client_response_headers, upstream_request_headers
from gateway.routing.model import Candidate, Reason
from gateway.runtime import Runtime

# Statuses that mean "this upstream cannot take it now, another may": try the next candidate.
RETRYABLE_STATUS = frozenset({429, 502, 503})
# 429 is load, not sickness: it must not eject a backend that is merely full.
NOT_A_HEALTH_FAILURE = frozenset({429})
SSE_TYPE = b"text/event-stream"


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


class StreamAborted(Exception):
    """The upstream failed after bytes reached the client: the response must be cut."""


async def forward(rt: Runtime, ex: Exchange, receive: Receive, send: Send) -> int:
    """Run the attempts while watching for the client to leave; cancel them if it does.
    Returns the status the client got."""
    work = asyncio.ensure_future(_Attempts(rt, ex, send).run())
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


class _Attempts:
    """The attempts of one exchange, and the failures they met."""

    def __init__(self, rt: Runtime, ex: Exchange, send: Send) -> None:
        self.rt = rt
        self.ex = ex
        self.send = send
        self.failures: list[Failure] = []
        scope = ex.scope
        assert ex.routed is not None
        peer = scope.get("client")
        client = str(ex.routed.client) if ex.routed.client else (peer[0] if peer else None)
        self.headers = upstream_request_headers(
            scope["headers"],
            client=client,
            peer_trusted=ex.routed.peer_trusted,
            scheme=scope.get("scheme", "http"),
            rid=ex.id,
        )
        target = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        self.target = target

    async def run(self) -> int:
        rt, ex = self.rt, self.ex
        candidates = ex.decision.order[: rt.config.retry.max_attempts]
        for i, cand in enumerate(candidates):
            if i > 0:
                if not rt.budget.try_retry(time.monotonic()):
                    rt.metrics.budget_exhausted.inc()
                    break
                rt.metrics.retries.inc()
            ex.attempts = i + 1
            status = await self._attempt(cand, i)
            if status is not None:
                ex.upstream = cand.upstream.id
                return status
        raise self._final_error()

    async def _attempt(self, cand: Candidate, index: int) -> int | None:
        """One upstream try. None: failed before any byte reached the client, try the next."""
        rt = self.rt
        t = rt.config.timeouts
        uid = cand.upstream.id
        resp: aiohttp.ClientResponse | None = None
        done = False
        rt.store.acquire(uid)
        try:
            try:
                async with asyncio.timeout(t.first_byte_s):
                    resp = await rt.http().request(
                        self.ex.scope["method"],
                        URL(cand.upstream.url + self.target, encoded=True),
                        data=self.ex.body,
                        headers=self.headers,
                        allow_redirects=False,
                    )
                    if resp.status in RETRYABLE_STATUS:
                        self._fail(
                            Failure(
                                uid,
                                FailureKind.STATUS,
                                f"HTTP {resp.status}",
                                resp.status,
                                resp.headers.get("Retry-After"),
                            ),
                            ok=resp.status in NOT_A_HEALTH_FAILURE,
                        )
                        return None
                    first = await resp.content.readany()
            except (TimeoutError, *CLIENT_ERRORS) as exc:
                kind, detail = classify(exc, f"no first byte in {t.first_byte_s:g} s")
                self._fail(Failure(uid, kind, detail))
                return None
            rt.metrics.attempts.labels(uid, "ok").inc()
            extra = [
                (b"x-request-id", self.ex.id.encode()),
                (ROUTE_HEADER.encode(), self.ex.decision.header(index).encode()),
            ]
            await self._stream(resp, first, extra, cand)
            done = True
            rt.store.record_result(uid, resp.status < 500, time.monotonic())
            return resp.status
        finally:
            rt.store.release(uid)
            if resp is not None:
                # A response read to the end goes back to the pool; anything else closes the
                # connection, which is how the upstream learns that nobody is listening.
                if done and resp.content.at_eof():
                    resp.release()
                else:
                    resp.close()

    def _fail(self, failure: Failure, ok: bool = False) -> None:
        self.failures.append(failure)
        self.rt.metrics.attempts.labels(failure.upstream, failure.label).inc()
        self.rt.store.record_result(failure.upstream, ok, time.monotonic())

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        first: bytes,
        extra: list[tuple[bytes, bytes]],
        cand: Candidate,
    ) -> None:
        t = self.rt.config.timeouts
        send = self.send
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total_s - self.ex.elapsed_s()
        headers = client_response_headers(resp.raw_headers, extra)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        self.rt.metrics.first_byte.labels(cand.upstream.region).observe(self.ex.elapsed_s())
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
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            await self._abort(resp, cand.upstream.id, isinstance(exc, TimeoutError))
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _abort(self, resp: aiohttp.ClientResponse, uid: str, timed_out: bool) -> None:
        """The upstream failed mid-response. SSE clients get a final error event they can act
        on (the OpenAI SDKs raise it); other clients get a reset stream, never a response that
        looks complete but is not."""
        self.rt.metrics.stream_aborted.labels("timeout" if timed_out else "upstream_error").inc()
        self.rt.store.record_result(uid, False, time.monotonic())
        what = "stopped answering" if timed_out else "failed"
        message = (
            f"upstream {uid} {what} in the middle of the response; the output is incomplete — "
            "retry the request"
        )
        if resp.headers.get("Content-Type", "").encode().startswith(SSE_TYPE):
            event = b"data: " + json.dumps(error_body(StreamInterrupted(message))).encode()
            await self.send({"type": "http.response.body", "body": event + b"\n\n"})
            return
        raise StreamAborted(message)

    def _final_error(self) -> GatewayError:
        failures, decision = self.failures, self.ex.decision
        tried = ", ".join(f.describe() for f in failures)
        more = len(decision.order) - len(failures)
        tail = f"; {more} more candidate(s) not tried (retry limit/budget)" if more > 0 else ""
        if decision.reason is Reason.PANIC:
            # Every allowed upstream was already known to be down; we tried them anyway in
            # case health checks lagged. That is "nothing healthy", not a surprise failure.
            rule = f" (residency rule {decision.residency})" if decision.residency else ""
            return NoHealthyUpstream(
                f"no healthy upstream is allowed for this client{rule}; tried the unhealthy "
                f"ones anyway: {tried}. Retry in {NO_CANDIDATE_RETRY_AFTER_S} s",
                retry_after_s=NO_CANDIDATE_RETRY_AFTER_S,
            )
        if failures and all(f.status == 429 for f in failures):
            waits = [f.retry_after for f in failures]
            after = max((int(w) for w in waits if w is not None and w.isdigit()), default=1)
            return UpstreamBusy(
                f"every upstream tried is at capacity: {tried}{tail}. Retry after {after} s",
                retry_after_s=after,
            )
        if failures and failures[-1].kind is FailureKind.TIMEOUT:
            return UpstreamTimeout(
                f"upstream timed out: {tried}{tail}. Retry; for very long prompts the operator "
                "can raise timeouts.first_byte_s"
            )
        return UpstreamFailed(f"upstream request failed: {tried}{tail}. Retry the request")
