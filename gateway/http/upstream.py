"""The ``/v1/*`` proxy, back half: try the decision's candidates in order, failing over only
before any byte reached the client and within the retry budget (and, unless
``retry.on_timeout``, not after an upstream accepted the request and then timed out: the
generation may still be running there); stream the answer back chunk by chunk; cut it cleanly
when the upstream fails mid-way. gateway.http.forward runs them, and cancels them when the
client leaves."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from gateway.client import CLIENT_ERRORS, Failure, FailureKind, Reach, Response, classify
from gateway.defaults import LOOP_STATUS
from gateway.errors import GatewayError, GatewayShuttingDown, StreamInterrupted
from gateway.http import events, restream
from gateway.http.asgi import Send
from gateway.http.errors import status_of
from gateway.http.exchange import Exchange
from gateway.http.final_error import (
    DRAIN_CUT,
    TOTAL_TIMEOUT,
    abort_cause,
    cut_message,
    final_error,
    log_cut,
    timeout_hint,
)
from gateway.http.headers import client_response_headers, gateway_headers, upstream_request_headers
from gateway.http.relay import relay
from gateway.http.reshape import openai_shaped
from gateway.http.ttft import no_token_s
from gateway.http.watchdog import TotalTimeout, Watchdog
from gateway.routing.model import Candidate
from gateway.runtime import Runtime
from gateway.traffic import carries_token
from gateway.watch import ejections

# Statuses that mean "this upstream cannot take it now, another may": try the next candidate.
RETRYABLE_STATUS = frozenset({429, 502, 503})
# 429 is load, not sickness: it must not eject a backend that is merely full.
NOT_A_HEALTH_FAILURE = frozenset({429})


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


class StreamAborted(Exception):
    """The upstream failed after bytes reached the client: the response must be cut."""

    # Logged by the proxy, with the request id, before it is raised on for the server to cut
    # the response: gateway.h1's Cycle.run logs no traceback for it (it is no bug).
    logged = True


class Attempts:
    """The attempts of one exchange, and the failures they met."""

    def __init__(self, rt: Runtime, ex: Exchange, send: Send, task: asyncio.Task[Any]) -> None:
        self.rt = rt
        self.task = task  # the request's, which runs the attempts (forward's)
        # One config for the whole exchange, looked up once: a reload while it runs applies
        # from the next request on, not to this one's later attempts.
        self.config = rt.config
        self.ex = ex
        self.send = send
        self.failures: list[Failure] = []
        # Set when an upstream accepted the request and then timed out: the work may still be
        # running there, so (unless retry.on_timeout) no other upstream is tried.
        self.held: str | None = None
        self.opened_at = 0.0  # perf_counter when the attempt that answered began
        self.tokened = False  # the stream's first token was seen (_token_seen)
        self.whole: restream.Whole | None = None  # a JSON answer to a stream request, read whole
        scope = ex.scope
        assert ex.routed is not None
        peer = scope.get("client")
        client = ex.routed.client_text or (peer[0] if peer else None)
        self.headers = upstream_request_headers(
            scope["headers"],
            peer=peer[0] if peer else None,
            client=client,
            peer_trusted=ex.routed.peer_trusted,
            scheme=scope.get("scheme", "http"),
            rid=ex.id,
            hops=ex.hops,
            decoded=ex.decoded,
        )
        target = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        self.target = target

    async def run(self) -> int:
        rt, ex = self.rt, self.ex
        made, limit = 0, self.config.retry.max_attempts  # attempts made, not candidates passed
        for i, cand in enumerate(ex.decision.order):
            if made == limit:
                break
            if made and not rt.store.takes_new_work(cand.upstream.id):
                continue  # drained or removed since it was routed
            made += 1
            if i > 0:
                if not rt.budget.try_retry(time.monotonic()):
                    rt.metrics.budget_exhausted.inc()
                    break
                rt.metrics.retries.inc()
            ex.attempts, ex.index = made, i
            try:
                status = await self._attempt(cand, i)
            except asyncio.CancelledError:  # the client left, or the drain's cut: the access
                ex.tried = cand.upstream.id if ex.upstream == "-" else None  # line names it
                raise
            if status is not None:  # ex.upstream is the answer's (_attempt)
                return status
            if self.held is not None:
                break
        if self.failures:
            ex.tried = self.failures[-1].upstream
        err = self._final_error()
        if ex.stream:  # no token at all: a 502, 503 or 504 is slow; a 429 is left out
            self._no_token(ex.region, status_of(err))
        raise err

    def _wait(self) -> tuple[float, str]:
        """How long to wait for the upstream's first byte, and the key that says so. A
        stream's first byte is its first token; a non-streaming answer's is the whole answer."""
        t = self.config.timeouts
        if self.ex.stream:
            return t.first_byte_s, "timeouts.first_byte_s"
        return t.response_s, "timeouts.response_s"

    async def _attempt(self, cand: Candidate, index: int) -> int | None:
        """One upstream try. None: failed before any byte reached the client, try the next."""
        rt = self.rt
        uid = cand.upstream.id
        done = False
        rt.store.acquire(uid)
        resp: Response | None = None
        try:
            resp = await self._open(cand)
            if resp is None:
                return None
            # The upstream answered: no other attempt follows, so the request's body and headers
            # need not live as long as the stream (bench/results/stream_memory_prompt16k.md).
            self.ex.body = b""
            self.headers = []
            # A 5xx passed on is no success (metrics.ATTEMPT_OUTCOMES), but a 508, a loop's
            failed = resp.status >= 500 and resp.status != LOOP_STATUS  # (a client's hops)
            rt.metrics.attempts.count(uid, "status_5xx" if failed else "ok")
            # Its answer goes to the client from here: a stream cut later (StreamAborted, a
            # client gone) is still this upstream's in the access line and traffic counts.
            self.ex.upstream, self.ex.served_region = uid, cand.upstream.region
            if self.whole is not None:
                done = await self._send_whole(resp.status, index, cand)
            else:
                done = await self._stream(resp, index, cand)
            if done:  # a cut stream was recorded as a failure where it broke (_abort); a 4xx
                self._record(cand, not failed)  # is the client's request, not the upstream's
            return resp.status
        finally:
            rt.store.release(uid)
            if resp is not None:
                # A response read to the end goes back to the pool; anything else closes the
                # connection, which is how the upstream learns that nobody is listening.
                if done and resp.at_eof():
                    resp.release()
                else:
                    resp.close()

    async def _open(self, cand: Candidate) -> Response | None:
        """Send the request and wait for the first byte of the answer's body (left unread, so
        that no frame holds it for the stream's life). None: it failed (the failure is
        recorded), and nothing reached the client."""
        rt, uid = self.rt, cand.upstream.id
        wait_s = self._wait()[0]
        resp: Response | None = None
        opened = False
        whole = ""  # what a failure did not get, once reading a JSON answer whole
        t0 = time.perf_counter()
        reach = Reach()
        try:
            # The wait is the client's own timer (gateway.client.conn), not asyncio.timeout.
            resp = await rt.http().request(
                self.ex.scope["method"],
                cand.upstream.url + self.target,
                self.headers,
                self.ex.body,
                reach,
                wait_s,
                until_body=True,  # one wake-up for a stream's head and first token
            )
            if resp.status in RETRYABLE_STATUS:
                failure = Failure(
                    uid,
                    FailureKind.STATUS,
                    resp.refusal(),
                    resp.status,
                    resp.header(b"retry-after"),
                )
                self._fail(failure, cand, ok=resp.status in NOT_A_HEALTH_FAILURE)
                resp.discard()  # kept for the next request: closed, each refusal cost one
                return None
            await resp.wait_body()
            if self.ex.stream and restream.applies(resp, self.ex.scope["path"]):
                # Read whole within the first byte's wait: its first token is in it. Failing,
                # it is a late or lost answer as any (below): the same failover rules.
                whole = "whole JSON answer (to send as events)"
                async with asyncio.timeout(max(wait_s - (time.perf_counter() - t0), 0.0)):
                    body = await resp.read_whole(restream.MAX_BYTES)
                if body is not None:  # else larger: it goes on as it came (restream.MAX_BYTES)
                    self.whole = restream.answer(resp.raw_headers, body, self.ex.body)
            opened = True
            self.opened_at = t0
            return resp
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            what = whole or ("first byte" if self.ex.stream else "answer")
            kind, detail = classify(exc, f"no {what} in {wait_s:g} s")
            # Reach, as for held below: a connection never made is answered as refused (502).
            self._fail(Failure(uid, kind, detail, connecting=not reach.connected), cand)
            if kind is FailureKind.TIMEOUT and reach.connected and not self.config.retry.on_timeout:
                self.held = uid
            return None
        finally:
            if resp is not None and not opened:
                resp.close()

    def _token_seen(self, cand: Candidate, watchdog: Watchdog | None = None) -> None:
        """The stream's first token (once a stream; the relay's sink or gateway._splice's C
        calls it): its time to first token from the request's arrival, the TTFT objective's
        (deploy/prometheus; a role chunk ahead of the token is not it), and from the attempt's
        start, the dashboard's. From now on a silence of idle_s cuts the stream."""
        now = time.perf_counter()
        self.tokened = True
        self.rt.metrics.first_byte.observe_at(now - self.ex.started, cand.upstream.region, "true")
        self.rt.traffic.first_token(cand.upstream.id, (now - self.opened_at) * 1000)
        if watchdog is not None:
            watchdog.token()

    def _no_token(self, region: str, status: int, cut: bool = False) -> None:
        """A stream that ends with no token: gateway.http.ttft says what it counts as."""
        s = no_token_s(status, self.ex.elapsed_s(), self.config.timeouts.first_byte_s, cut)
        if s is not None:  # not a 4xx
            self.rt.metrics.first_byte.observe_at(s, region, "true")

    def _record(self, cand: Candidate, ok: bool) -> None:
        self.rt.traffic.attempt(cand.upstream.id, ok)
        ejections.record_result(
            self.rt, cand.upstream.id, cand.upstream.region, ok, time.monotonic()
        )

    def _fail(self, failure: Failure, cand: Candidate, ok: bool = False) -> None:
        self.failures.append(failure)
        m = self.rt.metrics
        m.attempts.count(failure.upstream, failure.label)
        self._record(cand, ok)

    async def _stream(self, resp: Response, index: int, cand: Candidate) -> bool:
        """Stream the response to the client; False when the upstream failed mid-way. Nothing
        of the head or the first chunk stays referenced once sent: a frame here lives as long
        as the stream (bench/stream_memory.py counts what each open stream holds)."""
        send = self.send
        ex = self.ex
        headers = client_response_headers(openai_shaped(resp, ex.scope["path"]), self._ours(index))
        sse = events.framed(resp.header)  # else a cut is a reset
        resp.raw_headers = []
        ex.status = resp.status  # what the client got, should the stream be cut later on
        ex.response_starts()
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        del headers
        first = await resp.readany()  # there already (_open waited for it)
        m = self.rt.metrics
        region = cand.upstream.region
        # A whole answer's first byte is its end (stream="false"); a stream's, its first token's
        # (_token_seen): not a role chunk's, nor in an error's body, which may echo the prompt.
        seek = ex.stream and resp.status < 400
        if not ex.stream:
            m.first_byte.observe_at(ex.elapsed_s(), region, "false")
        # Whole events only (gateway.http.events): what waits is not sent, counted or sought.
        eof = resp.at_eof()
        sse = sse and not eof
        framer = events.EventFramer() if sse else None
        first = framer.take(first) if framer is not None else first
        ex.body_bytes += len(first)
        if seek and carries_token(first):
            self._token_seen(cand)
        if eof:  # the whole answer with the first read: one send, no idle timer (overhead.md)
            await send({"type": "http.response.body", "body": first, "more_body": False})
            if ex.stream and not self.tokened:
                self._no_token(region, resp.status)
            return True
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            first = b""
        # What is left of timeouts.total_s since the request's start (a deadline on the loop's
        # clock); until a stream's first token, first_byte_s from the attempt's start bounds
        # the wait, not idle_s: a role chunk sent ahead of a long prefill carries no token.
        t = self.config.timeouts
        waiting = ex.stream and not self.tokened
        first_s = t.first_byte_s - (time.perf_counter() - self.opened_at) if waiting else None
        left_s = t.total_s - ex.elapsed_s()
        try:
            if left_s <= 0:  # a body that began after total_s (a non-streaming answer's can)
                raise TotalTimeout
            # A time stamp per chunk, not a timer per chunk (gateway.http.watchdog).
            with Watchdog(t.idle_s, left_s, self.task, first_s=first_s) as watchdog:
                tell = functools.partial(self._token_seen, cand, watchdog)
                seen = tell if waiting and seek else None  # an error's body: no token sought
                path = await relay(
                    resp, send, ex, watchdog, seen, self.config.server.splice, framer
                )
            m.stream_path.count(path)
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            await self._abort(cand, abort_cause(exc), events.ends_cleanly(framer))
            return False
        except asyncio.CancelledError as exc:
            if not (sse and exc.args == (DRAIN_CUT,)):  # gateway.http.gate's cut says so
                raise  # a reset (gateway.http.intake): no event stream to end, or no drain
            # The drain's cut (server.drain_timeout_s) ends an event stream with an event that
            # says so, as an upstream's cut does: a reset read as a connection error. Another
            # cancel in the same turn (the client gone) is one error with the first's message:
            # that one goes on, as asyncio.timeout leaves a cancel not its own.
            if self.task.uncancel() > 0:
                raise
            await self._abort(cand, DRAIN_CUT, events.ends_cleanly(framer))
            return False
        if waiting and not self.tokened:  # a stream that ended with no token
            self._no_token(region, resp.status)
        rest = framer.held if framer is not None else b""  # an end with no blank line
        ex.body_bytes += len(rest)
        await send({"type": "http.response.body", "body": rest, "more_body": False})
        return True

    def _ours(self, index: int) -> list[tuple[bytes, bytes]]:
        """The headers this gateway adds to the answer of candidate ``index``."""
        ex = self.ex
        hint = ex.routed.preferred_region if ex.routed else None
        return gateway_headers(ex.id, ex.decision.header(index, ex.attempts), hint)

    async def _send_whole(self, status: int, index: int, cand: Candidate) -> bool:
        """The answer ``_open`` read whole (``self.whole``: a JSON answer to a stream request,
        as events where it was a completion) in one send."""
        assert self.whole is not None
        ex, (raw, body, events) = self.ex, self.whole
        if events:
            self.rt.metrics.answered_whole.count(cand.upstream.id)
            restream.said(ex.id, cand.upstream.id, cand.upstream.region)
        ex.status = status
        ex.response_starts()
        headers = client_response_headers(raw, self._ours(index))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        if carries_token(body):
            self._token_seen(cand)
        else:
            self._no_token(cand.upstream.region, status)
        ex.body_bytes += len(body)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        return True

    async def _abort(self, cand: Candidate, cause: str, sse: bool) -> None:
        """The response is cut mid-way (``cause``: abort_cause's). An open event stream gets
        a final error event (the OpenAI SDKs raise it), others a reset: never a response that
        looks complete. One warning names request, upstream and cause; so does the access line
        (an SSE stream's status stays the head's 200, which says nothing of the cut)."""
        ex, region = self.ex, cand.upstream.region
        self.rt.metrics.stream_aborted.count(cause, region, "true" if ex.stream else "false")
        ex.aborted = cause
        if ex.stream and not self.tokened:
            self._no_token(region, ex.status, cut=True)
        # This gateway's own limit or drain cut a response still coming: not the upstream.
        self._record(cand, cause in (TOTAL_TIMEOUT, DRAIN_CUT))
        message = cut_message(cause, cand.upstream.id, self.config.timeouts.total_s)
        log_cut(ex.id, cand.upstream.id, region, cause, message)
        if not sse:
            raise StreamAborted(message)
        drain = cause == DRAIN_CUT
        event = events.error_event(message, GatewayShuttingDown if drain else StreamInterrupted)
        ex.body_bytes += len(event)
        await self.send({"type": "http.response.body", "body": event})

    def _final_error(self) -> GatewayError:
        hint = timeout_hint(self.ex.stream, self._wait()[1])
        return final_error(self.failures, self.ex.decision, self.held, hint)
