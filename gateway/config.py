"""The gateway's config schema: every section and key, with its bounds and default, validated
up front by pydantic. Reading it from a TOML file with ``GEOGATE_*`` environment overrides is
``gateway.config_file``'s job."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from gateway import checks
from gateway import defaults as d
from gateway.config_ops import LEGACY_OPERATOR as LEGACY_OPERATOR
from gateway.config_ops import AdminSection, EdgeSection, LogSection, OpsSection
from gateway.config_routing import ConnectionWait, FilePath, Interval, Seconds, nameserver

# The routing part, re-exported: the schema is read from here (``from gateway.config import``).
from gateway.config_routing import ContinentCode as ContinentCode
from gateway.config_routing import CountryCode as CountryCode
from gateway.config_routing import DefaultLocation as DefaultLocation
from gateway.config_routing import ListenHost as ListenHost
from gateway.config_routing import Ratio as Ratio
from gateway.config_routing import Region as Region
from gateway.config_routing import ResidencyRule as ResidencyRule
from gateway.config_routing import StrictModel as StrictModel
from gateway.config_routing import Upstream as Upstream
from gateway.hosts import own_listener


class GatewaySection(StrictModel):
    region: str
    origin: Literal["client", "self"] = "self"
    trusted_proxies: tuple[Annotated[str, AfterValidator(checks.network)], ...] = ()


class ServerSection(StrictModel):
    host: ListenHost = d.HOST
    port: int = Field(default=d.PORT, ge=0, le=65535)
    workers: int = Field(default=d.WORKERS, ge=1, le=d.WORKERS_MAX)
    engine: Literal["uvicorn", "granian", "hypercorn"] = "uvicorn"
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    max_body_bytes: int = Field(default=d.MAX_BODY_BYTES, ge=1, le=d.MAX_BODY_BYTES_MAX)
    drain_timeout_s: Seconds = d.DRAIN_TIMEOUT_S
    access_log: bool = True
    # A stream's body past its first token from the upstream's connection to the client's
    # socket in C (gateway._splice), where the extension is built, the client's side is plain
    # TCP (the upstream's may be TLS) and the upstream's body is chunked.
    splice: bool = True
    max_header_bytes: int = Field(default=d.MAX_HEADER_BYTES, ge=1024, le=d.MAX_HEADER_BYTES_MAX)
    body_timeout_s: ConnectionWait = d.BODY_TIMEOUT_S
    head_timeout_s: ConnectionWait = d.HEAD_TIMEOUT_S  # the uvicorn engine's; granian has its own
    # How long an idle client connection is kept (uvicorn's and hypercorn's). Behind a load
    # balancer, longer than its idle timeout (an ALB's), so it never sends a request on a
    # connection this side is closing (a 502).
    keepalive_s: ConnectionWait = d.SERVER_KEEPALIVE_S
    # Proxied besides the OpenAI endpoints (gateway.http.paths), e.g. a backend's "/v1/tokenize".
    extra_api_paths: tuple[Annotated[str, AfterValidator(checks.api_path)], ...] = ()
    # Browser apps' origins allowed (CORS, gateway.http.cors), e.g. ["https://app.example.com"],
    # or ["*"] for any; empty: no CORS headers, preflights refused (405) as any OPTIONS.
    cors_origins: tuple[Annotated[str, AfterValidator(checks.cors_origin)], ...] = ()

    # One worker's capacity (gateway.http.gate); max_connections 0: max_streams + headroom.
    max_streams: int = Field(default=d.MAX_STREAMS, ge=1, le=d.MAX_STREAMS_MAX)
    max_connections: int = Field(default=0, ge=0, le=d.MAX_CONNECTIONS_MAX)
    backlog: int = Field(default=d.BACKLOG, ge=128, le=d.BACKLOG_MAX)  # granian refuses less
    h2_max_concurrent_streams: int = Field(
        default=d.H2_MAX_CONCURRENT_STREAMS, ge=1, le=d.H2_MAX_CONCURRENT_STREAMS_MAX
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class Timeouts(StrictModel):
    connect_s: ConnectionWait = d.CONNECT_TIMEOUT_S
    first_byte_s: Seconds = d.FIRST_BYTE_TIMEOUT_S  # streaming requests ("stream": true)
    response_s: Seconds = d.RESPONSE_TIMEOUT_S  # non-streaming: the whole answer
    idle_s: Seconds = d.IDLE_TIMEOUT_S
    total_s: Seconds = d.TOTAL_TIMEOUT_S


class RetrySection(StrictModel):
    max_attempts: int = Field(default=d.MAX_ATTEMPTS, ge=1, le=d.MAX_ATTEMPTS_MAX)
    budget_ratio: Ratio = d.RETRY_BUDGET_RATIO
    budget_min_per_s: float = Field(
        default=d.RETRY_BUDGET_MIN_PER_S, ge=0, le=d.RETRY_BUDGET_MIN_PER_S_MAX
    )
    budget_window_s: Seconds = d.RETRY_BUDGET_WINDOW_S
    on_timeout: bool = False  # fail over a timeout at an upstream that accepted the request


class RouterSection(StrictModel):
    tolerance_ms: float = Field(default=d.TOLERANCE_MS, ge=0, le=d.TOLERANCE_MS_MAX)
    tolerance_ratio: float = Field(default=d.TOLERANCE_RATIO, ge=0, le=d.TOLERANCE_RATIO_MAX)
    panic_threshold: Ratio = d.PANIC_THRESHOLD


class HealthSection(StrictModel):
    interval_s: Interval = d.HEALTH_INTERVAL_S
    timeout_s: Seconds = d.HEALTH_TIMEOUT_S
    healthy_threshold: int = Field(default=d.HEALTHY_THRESHOLD, ge=1, le=d.THRESHOLD_MAX)
    unhealthy_threshold: int = Field(default=d.UNHEALTHY_THRESHOLD, ge=1, le=d.THRESHOLD_MAX)
    jitter: Ratio = d.HEALTH_JITTER
    rtt_ewma_alpha: Annotated[float, Field(gt=0, le=1)] = d.RTT_EWMA_ALPHA
    completion_probe: bool = False  # a tiny completion to each ejected upstream: may end it
    completion_probe_path: Annotated[str, AfterValidator(checks.url_path)] = d.COMPLETION_PROBE_PATH
    completion_probe_max_tokens: int = Field(
        default=d.COMPLETION_PROBE_MAX_TOKENS, ge=1, le=d.COMPLETION_PROBE_MAX_TOKENS_MAX
    )
    completion_probe_timeout_s: Seconds = d.COMPLETION_PROBE_TIMEOUT_S


class OutlierSection(StrictModel):
    consecutive_failures: int = Field(default=d.CONSECUTIVE_FAILURES, ge=1, le=d.OUTLIER_COUNT_MAX)
    base_ejection_s: Seconds = d.BASE_EJECTION_S
    max_ejection_s: Seconds = d.MAX_EJECTION_S
    failure_rate_threshold: Annotated[float, Field(gt=0, le=1)] = d.FAILURE_RATE_THRESHOLD
    failure_rate_min_requests: int = Field(
        default=d.FAILURE_RATE_MIN_REQUESTS, ge=1, le=d.OUTLIER_COUNT_MAX
    )
    failure_rate_window_s: Seconds = d.FAILURE_RATE_WINDOW_S
    max_ejected_share: Ratio = d.MAX_EJECTED_SHARE

    @model_validator(mode="after")
    def _capped_above_base(self) -> OutlierSection:
        if self.base_ejection_s > self.max_ejection_s:
            raise ValueError(
                f"base_ejection_s ({self.base_ejection_s:g}) is over max_ejection_s "
                f"({self.max_ejection_s:g}), which caps every ejection"
            )
        return self


class LoadSection(StrictModel):
    enabled: bool = True
    poll_interval_s: Interval = d.LOAD_POLL_INTERVAL_S
    max_age_s: Seconds = d.LOAD_MAX_AGE_S
    path: Annotated[str, AfterValidator(checks.url_path)] = d.LOAD_PATH
    ttft_ewma_alpha: Annotated[float, Field(gt=0, le=1)] = d.TTFT_EWMA_ALPHA

    @model_validator(mode="after")
    def _fresh(self) -> LoadSection:
        # A sample older than max_age_s is ignored: were the polls further apart, the router
        # would have no load figures for part of every interval, and nothing would say so.
        if self.max_age_s <= self.poll_interval_s:
            raise ValueError(
                f"max_age_s ({self.max_age_s:g}) must be longer than poll_interval_s "
                f"({self.poll_interval_s:g}): each sample would expire before the next poll"
            )
        return self


class DiscoverySection(StrictModel):
    interval_s: Interval = d.DISCOVERY_INTERVAL_S
    timeout_s: Seconds = d.DISCOVERY_TIMEOUT_S
    # "ip", "ip:port" or "[ipv6]:port"; empty: the system's resolvers
    nameservers: tuple[Annotated[str, AfterValidator(nameserver)], ...] = ()


class GeoIPSection(StrictModel):
    database: FilePath | None = None
    reload_interval_s: Interval = d.GEOIP_RELOAD_INTERVAL_S
    default: DefaultLocation = DefaultLocation()


class RedisSection(StrictModel):
    # empty: in-memory state, one gateway. redis://, rediss://, redis+sentinel://
    url: Annotated[str, AfterValidator(checks.redis_url)] = ""
    deployment: Annotated[str, AfterValidator(checks.deployment)] = "default"
    gateway_id: str = ""  # empty: hostname-pid (of the `geogate gateway` process)
    # false: upstream health is this gateway's own, neither given to the fleet nor taken from
    # it; only the routing config is shared. For gateways whose upstream of one id is a
    # different server on each host (127.0.0.1: deploy/terraform's per-host gateways).
    share_health: bool = True
    refresh_interval_s: Interval = d.FLEET_REFRESH_INTERVAL_S
    observation_ttl_s: Seconds = d.OBSERVATION_TTL_S
    connect_timeout_s: Seconds = d.REDIS_TIMEOUT_S
    max_backoff_s: Seconds = d.REDIS_MAX_BACKOFF_S
    # How long after any start of Redis (empty, or from a saved copy) an operator change waits
    # (gateway.fleet.config_io.refuse_if_young). None: the gateways' reconnect and a refresh,
    # max_backoff_s + refresh_interval_s + REDIS_RESTORED_MARGIN_S.
    restart_grace_s: Annotated[float, Field(ge=0, le=d.DURATION_MAX_S)] | None = None
    # The fleet document kept across restarts, for a start while Redis is away (relative: to
    # the config file; gateway.fleet.last_known). None: kept while the gateway runs.
    state_file: FilePath | None = None

    @model_validator(mode="after")
    def _observations_outlive_a_refresh(self) -> RedisSection:
        if self.state_file is not None and not self.url:
            raise ValueError("state_file keeps a fleet's document: set redis.url, or drop it")
        # Each gateway rewrites its observations every refresh: with a TTL under two of them
        # they expire between writes (or after one late write), and the fleet's votes flicker.
        if self.observation_ttl_s < OBSERVATION_TTL_REFRESHES * self.refresh_interval_s:
            raise ValueError(
                f"observation_ttl_s ({self.observation_ttl_s:g}) must be at least "
                f"{OBSERVATION_TTL_REFRESHES} x refresh_interval_s "
                f"({self.refresh_interval_s:g}): observations would expire between writes"
            )
        return self

    @property
    def change_grace_s(self) -> float:
        """restart_grace_s, or what it defaults to."""
        if self.restart_grace_s is not None:
            return self.restart_grace_s
        return self.max_backoff_s + self.refresh_interval_s + d.REDIS_RESTORED_MARGIN_S


OBSERVATION_TTL_REFRESHES = 2  # redis.observation_ttl_s spans at least this many refreshes


class Config(StrictModel):
    gateway: GatewaySection
    server: ServerSection = ServerSection()
    timeouts: Timeouts = Timeouts()
    retry: RetrySection = RetrySection()
    router: RouterSection = RouterSection()
    health: HealthSection = HealthSection()
    outlier: OutlierSection = OutlierSection()
    load: LoadSection = LoadSection()
    discovery: DiscoverySection = DiscoverySection()
    geoip: GeoIPSection = GeoIPSection()
    redis: RedisSection = RedisSection()
    admin: AdminSection = AdminSection()
    ops: OpsSection = OpsSection()
    edge: EdgeSection = EdgeSection()
    log: LogSection = LogSection()
    regions: tuple[Region, ...] = Field(min_length=1)
    upstreams: tuple[Upstream, ...] = ()
    residency: tuple[ResidencyRule, ...] = ()
    # The regions drained as a whole: region id -> its upstreams that were drained on their
    # own, which stay drained when the region is undrained. Every upstream of a drained region
    # also has drained = true (gateway.fleet.config_doc keeps it so), as a region drain was
    # written before this key: a gateway of that release, which ignores the key, still routes
    # around the region.
    drained_regions: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ops_port(self) -> Config:
        if self.ops.port and self.ops.port == self.server.port:
            raise ValueError(
                f"ops.port {self.ops.port} is server.port too: the ops listener needs a port "
                "of its own (ops.port = 0 turns it off)"
            )
        return self

    @model_validator(mode="after")
    def _one_state_for_the_workers(self) -> Config:
        # Without Redis each worker keeps its own state: a drain or weight set through the
        # admin API (or the dashboard) would reach the one worker that took the request.
        # The admin API is the ops listener's: none (ops.port = 0), no admin change either.
        on = self.ops.port and self.admin.operators()
        if self.server.workers > 1 and not self.redis.url and on:
            raise ValueError(
                f"server.workers = {self.server.workers} with the admin API on needs redis.url: "
                "without it each worker keeps its own state, and an admin change would reach "
                "one worker of them (run one redis-server, or workers = 1)"
            )
        return self

    @model_validator(mode="after")
    def _ops_token_is_no_operators(self) -> Config:
        # ops.token is handed to Prometheus and the edge Worker: as an operator's token too,
        # it made audited admin changes in that operator's name.
        if self.ops.token and self.ops.token in self.admin.operators().values():
            raise ValueError(
                "ops.token is an admin operator's token too: whoever holds it for /metrics "
                "could make admin changes in that operator's name; give each its own"
            )
        return self

    @model_validator(mode="after")
    def _workers_the_engine_runs(self) -> Config:
        # gateway.server runs hypercorn in this process alone (no SO_REUSEPORT sockets or
        # supervisor for it): more workers would be silently one.
        if self.server.workers > 1 and self.server.engine == "hypercorn":
            raise ValueError(
                f'server.workers = {self.server.workers} with server.engine = "hypercorn": '
                'hypercorn runs one worker here; use engine = "uvicorn" or "granian" for more'
            )
        return self

    @model_validator(mode="after")
    def _no_upstream_is_this_gateway(self) -> Config:
        # A port's typo made one request into thousands, forwarded to itself to the stream
        # limit (per request, geogate-hops stops any loop: gateway.http.intake).
        s = self.server
        for i, u in enumerate(self.upstreams):
            if own_listener(u.url, s.host, s.port):
                raise ValueError(
                    f"upstreams[{i}] ({u.id}): url {checks.redact_url(u.url)} is this gateway's "
                    f"own listener (server.port {s.port}): a request would be forwarded to "
                    "itself; name the backend's port"
                )
        return self

    @model_validator(mode="after")
    def _references(self) -> Config:
        region_ids = [r.id for r in self.regions]
        _unique("regions", region_ids)
        _unique("upstreams", [u.id for u in self.upstreams])
        known = set(region_ids)
        if self.gateway.region not in known:
            raise ValueError(f"gateway.region {self.gateway.region!r} is not among regions")
        for i, u in enumerate(self.upstreams):
            if u.region not in known:
                raise ValueError(f"upstreams[{i}] ({u.id}): region {u.region!r} is not defined")
        names: set[str] = set()
        for i, rule in enumerate(self.residency):
            for r in rule.regions:
                if r not in known:
                    raise ValueError(f"residency[{i}]: region {r!r} is not defined")
            if rule.name and rule.name in names:  # the route header and messages name it
                raise ValueError(
                    f"residency[{i}]: name {rule.name!r} is another rule's too: which rule "
                    "applied could not be told; give each its own"
                )
            names.add(rule.name)
        return self

    @model_validator(mode="before")
    @classmethod
    def _drained_regions_hold_their_upstreams(cls, data: Any) -> Any:
        # Every upstream of a drained region drained, as a region drain writes it
        # (gateway.fleet.config_doc) and a gateway of the release before drained_regions
        # reads it: made so here, once, even where a file lists the region alone, so that
        # every reader (the snapshot, dns export, the fleet's document) reads the flags alone.
        if not isinstance(data, dict) or not isinstance(data.get("upstreams"), list | tuple):
            return data
        held = data.get("drained_regions")
        if not isinstance(held, dict) or not held:
            return data
        ups = [_drained(u) if _region_of(u) in held else u for u in data["upstreams"]]
        return {**data, "upstreams": ups}

    @model_validator(mode="after")
    def _drained_regions_known(self) -> Config:
        # After _references: the ids it checks are unique and every upstream's region known.
        known = [r.id for r in self.regions]
        for rid, own in self.drained_regions.items():
            if rid not in known:
                raise ValueError(
                    f"drained_regions: {rid!r} is not among regions ({', '.join(known)})"
                )
            members = [u.id for u in self.upstreams if u.region == rid]
            for uid in own:
                if uid not in members:
                    raise ValueError(
                        f"drained_regions.{rid}: {uid!r} is not an upstream of region {rid} "
                        f"(its upstreams: {', '.join(members) or 'none'})"
                    )
        return self

    def region(self, region_id: str) -> Region:
        return next(r for r in self.regions if r.id == region_id)


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"{what}: id {i!r} appears twice")
        seen.add(i)


def _region_of(upstream: Any) -> Any:
    return (
        upstream.get("region") if isinstance(upstream, dict) else getattr(upstream, "region", None)
    )


def _drained(upstream: Any) -> Any:
    if isinstance(upstream, Upstream):
        return upstream.model_copy(update={"drained": True})
    return {**upstream, "drained": True} if isinstance(upstream, dict) else upstream
