"""The ``/v1/*`` proxy, front half: read and check the body, locate the client, route; then
hand the exchange to ``forward`` (gateway.http.forward) and turn whatever went wrong into an
OpenAI-shaped answer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Collection, Sequence

from gateway.config import Config
from gateway.defaults import MAX_HOPS, NO_CANDIDATE_RETRY_AFTER_S
from gateway.errors import (
    GatewayError,
    GatewayShuttingDown,
    HeadersTooLarge,
    LoopDetected,
    ModelNotAllowedHere,
    ModelNotFound,
    NoHealthyUpstream,
)
from gateway.http.asgi import (
    CONTENT_LENGTH,
    NO_VALUE,
    REQUEST_ID_KEY,
    ASGIApp,
    Heads,
    Receive,
    Scope,
    Send,
)
from gateway.http.body import read_body
from gateway.http.body_form import form_model, is_form
from gateway.http.body_model import model_of
from gateway.http.encoding import decoded
from gateway.http.errors import send_error, status_of
from gateway.http.exchange import Exchange, logged_text
from gateway.http.final_error import DRAIN_CUT
from gateway.http.forward import forward
from gateway.http.headers import HOPS_HEADER, ROUTE_HEADER, hops_of, request_id
from gateway.http.paths import check_api_request
from gateway.http.upstream import ClientGone, StreamAborted
from gateway.routing.model import ExclusionKind, Outcome
from gateway.runtime import Routed, Runtime, log
from gateway.traffic import NOT_SERVED
from geodb.clientip import client_ip
from geodb.edge import HEADER as EDGE_HEADER
from geodb.location import LocationSource

_REQUEST_ID = b"x-request-id"
_CONTENT_ENCODING = b"content-encoding"
_CONTENT_TYPE = b"content-type"
_FORWARDED_FOR = b"x-forwarded-for"
_EDGE = EDGE_HEADER.encode()
_HOST = b"host"
_READ = frozenset(
    {
        _REQUEST_ID,
        CONTENT_LENGTH,
        _CONTENT_ENCODING,
        _CONTENT_TYPE,
        _FORWARDED_FOR,
        _EDGE,
        _HOST,
        HOPS_HEADER,
    }
)


def read_heads(headers: list[tuple[bytes, bytes]]) -> Heads:
    """The headers the proxy reads, each name's values in order, found in one pass: a lookup
    per name was a pass over the whole list per name, six per request."""
    found: Heads = {}
    for name, value in headers:
        if name in _READ:
            found.setdefault(name, []).append(value.decode("latin-1"))
    return found


def check_headers(scope: Scope, limit: int) -> None:
    """Refuse headers over ``limit`` bytes in all: what we accept we forward to a backend."""
    headers = scope["headers"]
    # "k: v\r\n"; map + chain keep the loop in C (a generator was 1.6 % of a request's CPU)
    size = sum(map(len, itertools.chain.from_iterable(headers))) + 4 * len(headers)
    if size > limit:
        raise HeadersTooLarge(
            f"request headers are {size} bytes, over this gateway's limit of {limit} bytes "
            "(server.max_header_bytes); send fewer or shorter headers"
        )


def _unresolved(rt: Runtime, model: str, regions: Collection[str] | None = None) -> list[str]:
    """The upstreams of ``model`` found by DNS (in ``regions``, where given): one that
    resolves to no addresses is in no snapshot, for now."""
    return [
        u.id
        for u in rt.config.upstreams
        if model in u.models and u.discovery != "none" and (regions is None or u.region in regions)
    ]


def _no_addresses(model: str, empty: list[str]) -> NoHealthyUpstream:
    retry = NO_CANDIDATE_RETRY_AFTER_S
    return NoHealthyUpstream(
        f"no upstream can serve model {logged_text(model)!r} now: {', '.join(empty)} "
        f"{'resolves' if len(empty) == 1 else 'resolve'} to no addresses (DNS discovery). "
        f"Retry in {retry} s",
        retry_after_s=retry,
    )


def check_routed(rt: Runtime, routed: Routed, model: str) -> None:
    """Raise the error a client gets when routing found nothing to send the request to."""
    decision, loc = routed.decision, routed.location
    retry = NO_CANDIDATE_RETRY_AFTER_S
    if decision.outcome is Outcome.MODEL_NOT_FOUND:
        empty = _unresolved(rt, model)
        if empty:
            raise _no_addresses(model, empty)
        raise ModelNotFound(
            f"model {logged_text(model)!r} is not served by any upstream of this gateway; "
            "GET /v1/models lists the models available",
            param="model",
        )
    if decision.outcome is Outcome.NO_CANDIDATE:
        where = loc.country or loc.continent
        if all(e.kind is ExclusionKind.RESIDENCY for e in decision.excluded):
            # None in the rule's regions serves it, drained or not: a retry is refused alike
            # until the config changes, and a 503's Retry-After had the SDKs wait 10 s for it.
            # Unless one there is found by DNS and resolves to nothing for now: a 503.
            policy, index = rt.store.policy, rt.store.policy.rule_index(loc)  # as rank found it
            regions = policy.residency[index].regions if index is not None else frozenset()
            empty = _unresolved(rt, model, regions)
            if empty:
                raise _no_addresses(model, empty)
            raise ModelNotAllowedHere(
                f"model {logged_text(model)!r} is not served to clients in {where}: residency "
                f"rule {decision.residency} keeps them in its regions, and no upstream there "
                "serves it; ask the operator for the model in one of those regions",
                param="model",
            )
        why = sorted({e.reason for e in decision.excluded if e.kind is not ExclusionKind.RESIDENCY})
        rule = (
            f" residency rule {decision.residency} keeps clients from {where} in its regions,"
            " and none there can serve now."
            if decision.residency
            else ""
        )
        raise NoHealthyUpstream(
            f"no upstream can serve model {logged_text(model)!r} now ({', '.join(why)}).{rule} "
            f"Retry in {retry} s",
            retry_after_s=retry,
        )


def _shutting_down(ex: Exchange) -> GatewayShuttingDown:
    return GatewayShuttingDown(
        f"this gateway is shutting down and could not finish request {ex.id} in time "
        "(server.drain_timeout_s); retry it: another gateway serves it"
    )


def _exchange(scope: Scope, heads: Heads) -> Exchange:
    """A request's record from its arrival, with its id (the client's when valid, else new).
    Proxy.__call__ writes the same inline: one call less on the served path."""
    return Exchange(request_id(heads.get(_REQUEST_ID, NO_VALUE)[0]), scope, time.perf_counter())


def _request_id_header(ex: Exchange) -> list[tuple[bytes, bytes]]:
    return [(b"x-request-id", ex.id.encode())]


def _error_headers(ex: Exchange) -> list[tuple[bytes, bytes]]:
    """The request id, and after routing what was tried: a 502 names the upstream to look at."""
    headers = _request_id_header(ex)
    if ex.routed is not None:
        route = ex.routed.decision.failure_header(ex.attempts, ex.index)
        headers.append((ROUTE_HEADER.encode(), route.encode()))
    return headers


class Proxy:
    """ASGI app for ``/v1/*`` requests that carry a body."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # granian says "http.disconnect" for a body it could not read too (read_body); the
        # engine is fixed for the process's life, so this is decided once.
        self.gone_unreadable = rt.config.server.engine == "granian"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        heads = read_heads(scope["headers"])
        ex = Exchange(request_id(heads.get(_REQUEST_ID, NO_VALUE)[0]), scope, time.perf_counter())
        # The config for the request's checks and its record, looked up once (a property chain
        # per lookup); the attempts take theirs as they start (gateway.http.upstream).
        config = self.rt.config
        # The served path keeps the exchange's record itself (upstream._stream, the relay): a
        # wrapper around ``send`` cost a coroutine frame per message. Errors use it (tracking).
        try:
            await self._serve(ex, config, heads, receive, send)
        except GatewayError as err:
            ex.status = status_of(err)
            await send_error(ex.tracking(send), err, _error_headers(ex))
        except ClientGone:
            ex.status = 499  # nginx's "client closed request"
        except asyncio.CancelledError:
            # Not the client leaving (that is ClientGone): the drain's cut past drain_timeout_s,
            # or the server stopping. The client is still there: an answer it can retry on.
            task = asyncio.current_task()
            if ex.response_started or task is None:
                if ex.response_started and ex.aborted is None:  # a cut (not one said already)
                    ex.aborted = DRAIN_CUT
                    cut = self.rt.metrics.stream_aborted.count
                    cut(DRAIN_CUT, ex.region, "true" if ex.stream else "false")
                raise  # the server cuts the response
            ex.status = 503
            task.uncancel()
            await send_error(ex.tracking(send), _shutting_down(ex), _request_id_header(ex))
        except StreamAborted:
            ex.status = 502  # logged where it was cut (gateway.http.final_error.log_cut)
            raise  # the ASGI server resets the stream: the client sees a truncated response
        except Exception:
            # A bug, not a condition we know: log it with the request id, and if nothing
            # reached the client yet, still answer in the shape API clients understand.
            ex.status = 500
            log.exception("unexpected error in request %s", ex.id)
            if ex.response_started:
                raise
            await send_error(
                ex.tracking(send),
                GatewayError(
                    f"internal error in the gateway (request id {ex.id}); retry, and report the "
                    "request id if it persists"
                ),
                _request_id_header(ex),
            )
        finally:
            self._record(ex, config)

    async def _serve(
        self, ex: Exchange, config: Config, heads: Heads, receive: Receive, send: Send
    ) -> None:
        rt, scope = self.rt, ex.scope
        server = config.server
        check_headers(scope, server.max_header_bytes)
        if HOPS_HEADER in heads:
            ex.hops = hops_of(heads[HOPS_HEADER][0])
            if ex.hops >= MAX_HOPS:
                raise LoopDetected(
                    f"this request came through {ex.hops} gateways (geogate-hops): an upstream "
                    "leads back to a gateway it passed; check the upstreams' URLs in the "
                    "config of the gateways it went through"
                )
        raw_path = scope.get("raw_path") or scope["path"].encode()
        # Checked on the path as sent: it is what the upstream gets (see upstream.py).
        check_api_request(scope["method"], raw_path.decode("latin-1"), server.extra_api_paths)
        limit = server.max_body_bytes
        ex.body = await read_body(
            scope,
            receive,
            limit,
            server.body_timeout_s,
            heads=heads,
            gone_unreadable=self.gone_unreadable,
        )
        encoding = ", ".join(heads.get(_CONTENT_ENCODING, ()))
        data = decoded(ex.body, encoding, limit)
        if data is not ex.body:  # sent on decoded: vLLM and Ollama decode none
            ex.body, ex.decoded = data, True
        ctype = heads.get(_CONTENT_TYPE, NO_VALUE)[0]
        if ctype is not None and is_form(ctype):
            ex.model, ex.stream = form_model(data, ctype)
        else:
            ex.model, ex.stream = model_of(data)
        peer = scope.get("client")
        now = time.monotonic()
        edge = heads.get(_EDGE, NO_VALUE)[0]  # the Host only matters to a signed edge header
        ex.routed = rt.locate_and_route(
            peer[0] if peer else None,
            heads.get(_FORWARDED_FOR, ()),
            ex.model,
            now,
            edge_header=edge,
            host=heads.get(_HOST, NO_VALUE)[0] if edge is not None else None,
        )
        rt.proxied += 1
        loc = ex.routed.location
        if ex.hops and loc.source is not LocationSource.EDGE:  # another gateway's, unsigned
            rt.unlocated_hop(ex.routed.client, heads.get(_FORWARDED_FOR, ()))
        m = rt.metrics
        m.by_country.count(loc.country or "unknown", str(loc.source))
        if ex.routed.preferred_region:
            m.missteered.count(ex.routed.preferred_region)
        check_routed(rt, ex.routed, ex.model)
        rt.budget.record_request(now)
        ex.status = await forward(rt, ex, receive, send)

    async def refuse(
        self,
        scope: Scope,
        send: Send,
        err: GatewayError,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Answer ``err`` before serving (the gate's stream limit, gateway.h1's connection
        limit), with the access line and the request metrics every answer gets; ``extra``:
        more response headers (Connection: close)."""
        ex = _exchange(scope, read_heads(scope["headers"]))
        ex.status = status_of(err)
        try:
            await send_error(ex.tracking(send), err, [*_request_id_header(ex), *extra])
        finally:
            self._record(ex, self.rt.config)

    def recorded(self, app: ASGIApp) -> Recorded:
        """``app`` (the gateway's own /v1 answers: the model list and cards) with the access
        line and the request metrics every answer gets: a client polling
        ``models.retrieve`` through an outage got 503s no operator could see."""
        return Recorded(self, app)

    def _record(self, ex: Exchange, config: Config) -> None:
        m = self.rt.metrics
        region = ex.region
        m.requests.count(str(ex.status), region)
        m.duration.observe_at(ex.elapsed_s(), region)
        if region == "-" and ex.status >= 500:
            self.rt.traffic.unrouted()
        if ex.routed is not None:
            loc = ex.routed.location
            if ex.status >= 500:  # errors by country: deploy/grafana
                m.client_errors.count(loc.country or "unknown")
            # The model only when served: then it is one the upstreams serve, not any string
            # a client sent.
            served = ex.upstream != NOT_SERVED
            self.rt.traffic.request(loc, ex.upstream, ex.model if served else "")
        if config.server.access_log:
            if ex.routed is None:  # answered before routing: the client as routing sees it
                peer = ex.scope.get("client")
                xff = read_heads(ex.scope["headers"]).get(_FORWARDED_FOR, ())
                ip = client_ip(peer[0] if peer else None, xff, self.rt.trusted)
                ex.client = str(ip) if ip is not None else None
            ex.log(config.log.format)


class Recorded:
    """An ASGI app with the proxy's access line and request metrics (``Proxy.recorded``); its
    request id is the line's (``scope[REQUEST_ID_KEY]``). A class, not a closure: Starlette
    takes a function route's endpoint for a request handler."""

    def __init__(self, proxy: Proxy, app: ASGIApp) -> None:
        self.proxy, self.app = proxy, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = _exchange(scope, read_heads(scope["headers"]))
        scope[REQUEST_ID_KEY] = ex.id
        try:
            await self.app(scope, receive, ex.tracking(send))
        finally:
            self.proxy._record(ex, self.proxy.rt.config)
