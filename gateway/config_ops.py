"""The operator-facing sections of the config schema: the admin API's operators, the ops
listener, the edge Worker's keys and the logs (gateway.config has the rest and the whole).

Tokens are checked here for what a client can send: an HTTP header carries visible ASCII
only, and a token with a line break (a Kubernetes secret made from a file ends in one), a
space or an accented letter was taken, then matched by no request: the operator and the
scraper were locked out, and their retries tripped the auth throttle."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from gateway import checks
from gateway import defaults as d
from gateway.config_routing import ListenHost, PublicUrl, Seconds, StrictModel

Token = Annotated[str, AfterValidator(checks.header_token)]

LEGACY_OPERATOR = "admin"  # who the single admin.token is


class AdminSection(StrictModel):
    """The admin API's operators, each with a token of their own (the audit's "who" is the
    name whose token was sent); ``token``, the one shared token of old, is "admin"."""

    token: Token = ""
    tokens: dict[
        Annotated[str, AfterValidator(checks.operator_name)],
        Annotated[Token, Field(min_length=1)],
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct(self) -> AdminSection:
        tokens = list(self.operators().values())
        if len(set(tokens)) != len(self.tokens) + bool(self.token):
            legacy = " (token is the operator 'admin')" if self.token else ""
            raise ValueError(
                f"two operators share a name or a token{legacy}: the audit could not tell "
                "them apart"
            )
        return self

    def operators(self) -> dict[str, str]:
        """Operator name -> token; empty: the admin API is off."""
        legacy = {LEGACY_OPERATOR: self.token} if self.token else {}
        return {**self.tokens, **legacy}


class OpsSection(StrictModel):
    """The ops listener (gateway.http.ops); ``token`` guards all but /admin/*."""

    host: ListenHost = d.OPS_HOST
    port: int = Field(default=d.OPS_PORT, ge=0, le=65535)  # 0: no ops listener
    token: Token = ""
    # The dashboard's address as browsers see it behind a proxy that terminates TLS (e.g.
    # "https://ops.example.com"): logins and changes must come from its origin (a proxy may
    # rewrite Host), and an https one makes the session cookie Secure. Empty: the request's.
    public_url: PublicUrl = Field(default="", pattern=r"^(https?://[^/?#]+/?)?$")
    # Without a token, the names answered besides addresses, localhost and public_url's host
    # (gateway.http.ops.HostGuard: DNS rebinding), e.g. ["gateway-a"], Prometheus's target.
    hosts: tuple[Annotated[str, AfterValidator(checks.host_name)], ...] = ()


class EdgeSection(StrictModel):
    """The edge Worker's signed client location (geodb.edge): believed only when signed with
    one of ``keys`` (key id -> shared secret; two during a rotation), within ``max_skew_s``,
    for one of ``audiences`` (hosts; empty: the request's own Host)."""

    keys: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")],
        Annotated[str, Field(min_length=d.EDGE_MIN_SECRET_CHARS)],
    ] = Field(default_factory=dict)
    max_skew_s: Seconds = d.EDGE_MAX_SKEW_S
    audiences: tuple[Annotated[str, Field(min_length=1)], ...] = ()


class LogSection(StrictModel):
    """Event and access logs on stderr (gateway.logs): "text", or "ecs" (Elastic Common
    Schema JSON, both kinds). ``level`` is the events'; the access log is server.access_log."""

    format: Literal["text", "ecs"] = d.LOG_FORMAT
    level: Literal["debug", "info", "warning", "error"] = d.LOG_LEVEL
    # Lines of one kind that can come per request a worker writes in LOG_REPEAT_WINDOW_S
    # (gateway.logs.RepeatLimit); 0: every one.
    max_repeats: int = Field(default=d.LOG_MAX_REPEATS, ge=0, le=d.LOG_MAX_REPEATS_MAX)
