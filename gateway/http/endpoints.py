"""The gateway's own endpoints: liveness, readiness, models, the load it publishes, metrics,
the routing table and the explain view of one routing decision."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, request_response

from backend.shapes import model_card
from gateway.defaults import NO_CANDIDATE_RETRY_AFTER_S
from gateway.errors import (
    GatewayError,
    ModelNotFound,
    NoHealthyUpstream,
    RequestInvalid,
    UnknownEndpoint,
)
from gateway.http.asgi import REQUEST_ID_KEY, ASGIApp, Receive, Scope, Send
from gateway.http.errors import JSONAnswer, json_error, send_error
from gateway.http.exchange import logged_text
from gateway.http.intake import check_routed
from gateway.http.worker_metrics import refresh
from gateway.routing.load import REGION_ROUTABLE, REGION_TTFT, expected_ttft_ms, routable_views
from gateway.routing.model import UpstreamView
from gateway.runtime import Routed, Runtime
from geodb.clientip import parse_ip
from geodb.edge import HEADER as EDGE_HEADER

# Public, as /readyz is: an edge gateway in front of this one (upstream load_path = "/load")
# reads the region's load here; the ops listener with the full /metrics is not for it to reach.
LOAD_PATH = "/load"


class Endpoints:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def routes(self, recorded: Callable[[ASGIApp], ASGIApp]) -> list[Route]:
        """The public listener's: liveness, readiness, published load, the model list.
        ``recorded``: the proxy's (``Proxy.recorded``), which gives the model list and cards,
        API answers, their access lines and request metrics; it must return no function, which
        Starlette would take for a request handler. Another method than GET or HEAD finds the
        proxy's route, which answers it (405) as for any /v1 path."""
        api = ["GET", "HEAD"]
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route(LOAD_PATH, self.load),
            Route("/v1/models", recorded(request_response(self.models)), methods=api),
            Route(
                "/v1/models/{model:path}", recorded(request_response(self.model_one)), methods=api
            ),
        ]

    def ops_routes(self) -> list[Route]:
        """The ops listener's (``gateway.http.ops``): upstream ids, errors and a GeoIP lookup
        are for operators and the edge tier, not for anyone who can reach the API."""
        return [
            Route("/metrics", self.metrics),
            Route("/routing-table", self.routing_table),
            Route("/explain", self.explain),
        ]

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        if self.rt.draining:
            return PlainTextResponse("draining", status_code=503)
        views = self.rt.store.snapshot(time.monotonic()).upstreams
        n = len(_healthy(views))
        if n == 0:
            drained = sum(u.healthy and u.drained for u in views)
            # Drained by an operator is no outage to chase: say which it is.
            why = f" ({drained} healthy but drained)" if drained else ""
            return PlainTextResponse(
                f"not ready: no healthy, undrained upstream{why}", status_code=503
            )
        stale = self.rt.store.stale_since
        if stale is not None:
            # Still serving on the last snapshot: ready, but say so, and on which (a gateway
            # that never reached Redis routes on its own file).
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stale))
            basis = (
                "the last snapshot"
                if self.rt.store.synced_once
                else "this gateway's own file (never in sync with the fleet)"
            )
            return PlainTextResponse(
                f"degraded: shared state stale since {since}; "
                f"routing on {basis} ({n} healthy upstream(s))"
            )
        refused = self.rt.store.refused
        if refused is not None:
            # Serving, on the document before (every gateway may refuse the same one: a 503
            # here would take the fleet out of rotation), but not on the fleet's: say so.
            on = f"version {self.rt.store.version}" if self.rt.store.version else "its own file"
            return PlainTextResponse(
                f"degraded: ignoring the fleet config in Redis ({refused}); "
                f"routing on {on} ({n} healthy upstream(s))"
            )
        return PlainTextResponse(f"ready: {n} healthy upstream(s)")

    async def load(self, request: Request) -> Response:
        """The region's load as one figure in Prometheus text, for the gateways in front of
        this one: two numbers, nothing about upstream ids or errors. No TTFT line while none
        is measured: the reader then treats this region as unmeasured, not as fast.

        ``?model=NAME``: over the upstreams serving that model only. Without it, over all,
        the best of them: a region serving a small and a large model would advertise the
        small one's TTFT for both, so an edge that sends it several models lists it once per
        model, each with ``load_path = "/load?model=NAME"``."""
        snap = self.rt.store.snapshot(time.monotonic())
        region = self.rt.config.gateway.region
        model = request.query_params.get("model")
        views = [u for u in snap.upstreams if model is None or model in u.models]
        ttft = expected_ttft_ms(views)
        routable = len(routable_views(views))
        lines = [
            f"# HELP {REGION_ROUTABLE} Upstreams this gateway can route to now",
            f"# TYPE {REGION_ROUTABLE} gauge",
            f'{REGION_ROUTABLE}{{region="{region}"}} {routable}',
        ]
        if ttft is not None:
            lines += [
                f"# HELP {REGION_TTFT} Expected time to first token of a request routed here "
                "now: the best routable upstream's TTFT x (1 + queue / slots)",
                f"# TYPE {REGION_TTFT} gauge",
                f'{REGION_TTFT}{{region="{region}"}} {ttft / 1000:.6f}',
            ]
        return Response("\n".join(lines) + "\n", media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        """The models the router would send this client's request for to a healthy upstream
        now: residency rules included (one kept from this client was listed)."""
        now = time.monotonic()
        models = sorted(self._models_configured())
        data = []
        if models:
            # Located once (its GeoIP lookup, a signed edge header's check and count), routed
            # for each model from there.
            first = self._routed(request, models[0], now)
            for m in models:
                routed = first if m == models[0] else self._route_as(first, m, now)
                if self._served(routed, m) is None:
                    data.append(_card(m))
        return JSONAnswer({"object": "list", "data": data}, headers=_request_id(request))

    async def model_one(self, request: Request) -> Response:
        """The model's card, or the error a request for it gets (check_routed's: a 404 for a
        model not served here, a 503 for one a residency rule keeps this client from), or a
        503 while only a panic's unhealthy upstreams would be tried."""
        name = request.path_params["model"]
        headers = _request_id(request)
        if not name:  # "/v1/models/": no model named, not a model "" nobody serves
            response = json_error(_unknown("/v1/models/", _NO_MODEL_NAMED))
            response.headers.update(headers)
            return response
        err = self._served(self._routed(request, name, time.monotonic()), name)
        if err is None:
            return JSONAnswer(_card(name), headers=headers)
        response = json_error(err)
        response.headers.update(headers)
        return response

    def _served(self, routed: Routed, model: str) -> GatewayError | None:
        """None where the router sends the request to a healthy upstream. In a panic with
        none healthy a request is still tried (fail open), but nothing says it will be
        answered: not listed, and its card is a 503 an SDK retries, not a 404."""
        try:
            check_routed(self.rt, routed, model)
        except GatewayError as err:
            return err
        if any(c.upstream.healthy for c in routed.decision.order):
            return None
        retry = NO_CANDIDATE_RETRY_AFTER_S
        return NoHealthyUpstream(
            f"model {logged_text(model)!r} is served here, but by no healthy, undrained "
            f"upstream now. Retry in {retry} s",
            retry_after_s=retry,
        )

    def _route_as(self, located: Routed, model: str, now: float) -> Routed:
        """The decision for ``model`` for the client ``located`` found."""
        return self.rt.route(located.client, located.peer_trusted, located.location, model, now)

    def _routed(self, request: Request, model: str, now: float) -> Routed:
        """The decision for ``model`` for this request's client, located as a request is."""
        peer = request.client.host if request.client else None
        return self.rt.locate_and_route(
            peer,
            request.headers.getlist("x-forwarded-for"),
            model,
            now,
            edge_header=request.headers.get(EDGE_HEADER),
            host=request.headers.get("host"),
        )

    def _models_configured(self) -> set[str]:
        """Every declared upstream's models, whatever its state: a DNS pool's members carry
        its models (routing.members.expand), and a pool with none yet is declared too."""
        return {m for u in self.rt.config.upstreams for m in u.models}

    async def metrics(self, request: Request) -> Response:
        refresh(self.rt)  # the gauges, as each worker of several brings its own up to date
        return Response(generate_latest(self.rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _upstream_row(self, u: UpstreamView, in_flight: int) -> dict[str, object]:
        store = self.rt.store
        ls = store.load(u.id)
        h, now = store.health(u.id), time.monotonic()
        return {
            "id": u.id,
            "healthy": u.healthy,
            "drained": u.drained,
            "weight": u.weight,
            "bias_ms": u.bias_ms,
            "rtt_ms": None if u.rtt_ms is None else round(u.rtt_ms, 2),
            "models": sorted(u.models),
            "slots": u.slots,
            "in_flight": in_flight,
            "queue_depth": u.queue_depth,
            "kv_usage": ls.kv_usage if ls else None,
            "ttft_ms": None if u.ttft_ms is None else round(u.ttft_ms, 1),
            "last_error": h.last_probe_error,
            # passive health: seconds of ejection left (0: in rotation), why, how often
            **h.ejection_fields(now),
            # who saw what: each fresh gateway's verdict (fleet mode)
            "seen_by": store.observations.get(u.id, {}),
            "fleet_down": u.id in store.fleet_down,
        }

    async def routing_table(self, request: Request) -> Response:
        store = self.rt.store
        config = store.config
        snap = store.snapshot(time.monotonic())
        regions = []
        for r in config.regions:
            ups = [u for u in snap.upstreams if u.region == r.id]
            regions.append(
                {
                    "id": r.id,
                    "name": r.name,
                    "latitude": r.latitude,
                    "longitude": r.longitude,
                    "url": r.url,  # where the edge Worker sends this region's clients
                    "healthy": any(u.healthy and not u.drained for u in ups),
                    "upstreams": [self._upstream_row(u, snap.in_flight.get(u.id, 0)) for u in ups],
                }
            )
        shared = "local" if not config.redis.url else ("stale" if store.stale_since else "fresh")
        return JSONAnswer(
            {
                "self_region": config.gateway.region,
                "origin": config.gateway.origin,
                "version": store.version,
                "shared_state": shared,
                # Why the fleet's document in Redis is not ``version`` (this gateway refuses
                # it and routes on the one before; /readyz says degraded); None: it is.
                "fleet_config_refused": store.refused,
                "policy": self._policy(),
                "regions": regions,
                "worker": self.rt.worker,  # which one answered (several: ejections are each's)
            }
        )

    def _policy(self) -> dict[str, object]:
        """The routing rules, for the edge Worker to route as this gateway would."""
        p = self.rt.store.policy
        return {
            "tolerance_ms": p.tolerance_ms,
            "tolerance_ratio": p.tolerance_ratio,
            "panic_threshold": p.panic_threshold,
            "residency": [
                {
                    "name": r.name,
                    "countries": sorted(r.countries),
                    "continents": sorted(r.continents),
                    "regions": sorted(r.regions),
                }
                for r in p.residency
            ],
        }

    async def explain(self, request: Request) -> Response:
        """The decision for a request from ``ip`` (default: this request's own client, found
        the way the proxy finds it, trusted-proxy rule included)."""
        params = request.query_params
        model = params.get("model", "")
        if unknown := sorted(set(params) - _EXPLAIN_PARAMS):
            return json_error(
                RequestInvalid(
                    f"/explain takes model= and ip=, not {', '.join(unknown)}"
                    + (
                        "; a country is the dashboard's: /dashboard/api/explain?country="
                        if "country" in unknown
                        else ""
                    )
                )
            )
        if not model:
            return json_error(
                RequestInvalid(
                    "give the model to route, model=NAME (the public listener's GET /v1/models "
                    "lists them); without one every upstream is ruled out as not serving it"
                )
            )
        now = time.monotonic()
        ip_text = params.get("ip")
        if ip_text:
            try:
                ip = parse_ip(ip_text)
            except ValueError:
                return json_error(
                    RequestInvalid(
                        f"ip {ip_text!r} is not an IP address; give one such as ip=203.0.113.7, "
                        "or leave ip out for the decision on your own address"
                    )
                )
            routed = self.rt.route_ip(ip, False, model, now)
        else:
            routed = self._routed(request, model, now)
        decision = routed.decision
        return JSONAnswer(
            {
                "model": model,
                "ip": routed.client_text or ip_text or "",  # normalised (::ffff:a.b.c.d: a.b.c.d)
                "location": routed.location.as_dict(),
                "decision": decision.explain(),
                "header": decision.header(),
                "worker": self.rt.worker,
            }
        )


_EXPLAIN_PARAMS = frozenset({"model", "ip"})


# A card's "created": when the gateway's main process loaded this module (before it forks
# its workers, so every worker's cards agree), the nearest it knows to when the model came to
# be served here (a constant 0 read as 1970 in clients that show it).
_LISTED_SINCE = int(time.time())


def _card(model: str) -> dict[str, object]:
    return model_card(model, _LISTED_SINCE, "geogate")


def _healthy(views: Sequence[UpstreamView]) -> list[UpstreamView]:
    return [u for u in views if u.healthy and not u.drained]


def _request_id(request: Request) -> dict[str, str]:
    """The client's request id, or a new one, as every /v1 answer carries (the SDKs'
    ``_request_id``)."""
    return {"x-request-id": request.scope[REQUEST_ID_KEY]}  # the access line's (recorded)


_NO_MODEL_NAMED = "names no model: GET /v1/models lists them, GET /v1/models/ID reads one"


def unknown_public(path: str) -> GatewayError:
    """The public listener's unknown path: its error (gateway.http.app answers it with an
    access line and counted, as every request: a scanner's probes were invisible)."""
    if path.startswith("/v1/models/"):  # an id with a line break, which {model:path} misses
        return ModelNotFound(
            f"model {logged_text(path.removeprefix('/v1/models/'))!r} is not served by any "
            "upstream of this gateway; GET /v1/models lists the models available",
            param="model",
        )
    if path == "/admin" or path.startswith("/admin/"):  # not the admin API's words: not here
        return UnknownEndpoint(
            f"{path}: the admin API is on the ops listener (ops.port), not this public one"
        )
    return _unknown(path, "is not an endpoint of this gateway; the API is under /v1/")


async def ops_not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """The ops listener's: it has no /v1/, which the public one's words pointed at."""
    what = (
        "is not an endpoint of the ops listener, which serves /metrics, /routing-table, "
        "/explain, /dashboard and /admin/; the model API (/v1/) is on the public listener"
    )
    await send_error(send, _unknown(scope["path"], what))


def _unknown(path: str, what: str) -> UnknownEndpoint:
    if path == "/admin" or path.startswith("/admin/"):
        # An operator with a typo: point at the admin API, not at the model API.
        what = (
            "is not an endpoint of the admin API, which has GET /admin/config, "
            "PATCH /admin/upstreams/{id}, PATCH /admin/regions/{id}, GET /admin/audit and POST "
            "/admin/config/restore (on the ops listener)"
        )
    return UnknownEndpoint(f"{path} {what}")
