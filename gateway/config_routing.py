"""The routing part of the config schema, the part a fleet shares (gateway.fleet.config_doc):
regions, upstreams, residency rules, and the default location; and what every section of the
schema is built on (a strict model, checked field types). gateway.config has the rest."""

from __future__ import annotations

import ipaddress
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import checks
from gateway import defaults as d
from geodb.countries import country_code

# Durations in seconds: more than 0, and at most a bound (gateway.defaults: 1e300 was taken).
Seconds = Annotated[float, Field(gt=0, le=d.DURATION_MAX_S)]
ConnectionWait = Annotated[float, Field(gt=0, le=d.CONNECTION_WAIT_MAX_S)]
Interval = Annotated[float, Field(gt=0, le=d.INTERVAL_MAX_S)]
CountryCode = Annotated[str, AfterValidator(country_code)]
ContinentCode = Annotated[str, AfterValidator(checks.continent_code)]
Ratio = Annotated[float, Field(ge=0, le=1)]
ListenHost = Annotated[str, AfterValidator(checks.listen_host)]
FleetId = Annotated[str, AfterValidator(checks.fleet_id)]
FilePath = Annotated[Path, BeforeValidator(checks.named_path)]
PublicUrl = Annotated[str, AfterValidator(checks.public_url)]


class StrictModel(BaseModel):
    # No NaN or infinity anywhere (TOML has both): a NaN weight or bias poisons every score
    # it touches, and an infinite timeout is no timeout.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: object, info: ValidationInfo) -> object:
        # Lax mode takes TOML's true as 1 (port = true: port 1). Text still passes: environment
        # overrides arrive as "9000".
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and takes_a_number(field.annotation):
            raise ValueError("a number, not true or false")
        return value


def takes_a_number(annotation: object) -> bool:
    """Whether a field's type is a number, also inside Annotated[...] and X | None: comparing
    the annotation with int and float missed redis.restart_grace_s's, which took true as 1."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Annotated, Union, types.UnionType):
        return any(takes_a_number(arg) for arg in get_args(annotation))
    return False


def region_address(address: str) -> str:
    """A region's address, as GeoDNS answers it (``dns_address``)."""
    return dns_address(address, "the region's entry (its load balancer)")


def dns_address(address: str, whose: str) -> str:
    """An address GeoDNS answers, ``whose`` it is (a region's entry, a name server): a scoped
    IPv6 one (fe80::1%eth0) made PowerDNS answer SERVFAIL, and 0.0.0.0 was answered to
    clients. Loopback passes: a local zone (the tests', a laptop's) answers 127.0.0.N."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address (such as 192.0.2.10)") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError(f"{address!r} has a zone (%{ip.scope_id}): give the address alone")
    if ip.is_unspecified:
        raise ValueError(f"{address!r} is no address a client could reach")
    # ::ffff:192.0.2.10 is an IPv4 address in IPv6's notation, for a host's own sockets: as an
    # AAAA record no IPv6-only client reaches it, and it passed beside its own IPv4 form.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValueError(
            f"{address!r} is an IPv4-mapped IPv6 address: give the IPv4 address "
            f"{str(ip.ipv4_mapped)!r} (an A record), or a real IPv6 one"
        )
    # Nor is a multicast or broadcast one (224.0.0.1, ff02::1, 255.255.255.255), one of IPv4's
    # reserved 240/4, which no host stack sends to, or a link-local one (169.254/16, fe80::/10),
    # reachable on one link alone: every client sent there failed.
    if ip.is_multicast:
        what = "a multicast"
    elif ip == ipaddress.IPv4Address("255.255.255.255"):
        what = "the broadcast"
    elif ip.version == 4 and ip.is_reserved:
        what = "a reserved (240.0.0.0/4)"
    elif ip.is_link_local:
        what = "a link-local"
    else:
        return address
    raise ValueError(
        f"{address!r} is {what} address, which no client could connect to: give the address "
        f"of {whose}"
    )


class Region(StrictModel):
    id: FleetId
    name: str = ""
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    # The region gateway's public URL (e.g. https://eu-central.api.example.com): the edge
    # Worker proxies to it, and GeoDNS checks its /readyz.
    url: PublicUrl = ""
    # The IPs of the region's entry (its load balancer): what GeoDNS answers (geogate dns export).
    addresses: tuple[Annotated[str, AfterValidator(region_address)], ...] = ()
    # No drain flag here: a region's drain is Config.drained_regions, a top-level key that a
    # gateway of a release before it ignores (this model is extra="forbid" there too).


class Upstream(StrictModel):
    id: FleetId
    region: str
    url: Annotated[str, AfterValidator(checks.upstream_url)]
    models: tuple[Annotated[str, AfterValidator(checks.model_name)], ...] = Field(min_length=1)
    # The same bounds as the admin API's (fleet.config_doc): file and API agree.
    weight: float = Field(default=1.0, ge=0, le=d.MAX_WEIGHT)  # 0 = standby
    bias_ms: float = Field(default=0.0, ge=-d.MAX_BIAS_MS, le=d.MAX_BIAS_MS)
    slots: int = Field(default=d.DEFAULT_SLOTS, ge=1, le=d.SLOTS_MAX)
    health_path: Annotated[str, AfterValidator(checks.url_path)] = d.HEALTH_PATH
    # Where the load poller reads this upstream's load; empty: [load] path. An upstream that
    # is a regional geogate gateway publishes its region's load on its public "/load" (its
    # /metrics is on the ops listener, which an edge elsewhere does not reach).
    load_path: str = ""
    drained: bool = False
    # "dns": the url's host is a name whose A/AAAA records are the pool; "srv": the SRV
    # record `srv` gives hosts and ports. Each address becomes a member "<id>@<addr>:<port>".
    discovery: Literal["none", "dns", "srv"] = "none"
    srv: str = ""

    @model_validator(mode="after")
    def _each_model_once(self) -> Upstream:
        # A typo'd copy of a name is the usual cause; the other name was probably meant.
        twice = next((m for i, m in enumerate(self.models) if m in self.models[:i]), None)
        if twice is not None:
            raise ValueError(f"models: {twice!r} is listed twice")
        return self

    @model_validator(mode="after")
    def _srv_name(self) -> Upstream:
        if self.discovery == "srv" and not self.srv:
            raise ValueError('discovery = "srv" needs srv = "_service._tcp.name"')
        if self.load_path and not self.load_path.startswith("/"):
            raise ValueError(
                f'load_path {self.load_path!r} must start with "/" (a regional gateway\'s is '
                '"/load"), or be empty for [load] path'
            )
        try:  # a space or a line break: a broken request line, as in health_path
            checks.url_path(self.load_path or "/")
        except ValueError as exc:
            raise ValueError(f"load_path {self.load_path!r}: {exc}") from None
        return self


class ResidencyRule(StrictModel):
    """Clients from these countries or continents may only be served in these regions."""

    name: Annotated[str, AfterValidator(checks.residency_name)] = ""
    countries: tuple[CountryCode, ...] = ()
    continents: tuple[ContinentCode, ...] = ()
    regions: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _matches_something(self) -> ResidencyRule:
        if not self.countries and not self.continents:
            raise ValueError("a residency rule needs countries or continents to match")
        return self


class DefaultLocation(StrictModel):
    latitude: float = Field(default=d.DEFAULT_LATITUDE, ge=-90, le=90)
    longitude: float = Field(default=d.DEFAULT_LONGITUDE, ge=-180, le=180)
    country: CountryCode | None = None
    continent: ContinentCode | None = None


def nameserver(server: str) -> str:
    """What c-ares takes as a DNS server: an IP, "ip:port" or "[ipv6]:port". A name would
    need a resolver to find the resolver (and c-ares refuses it at the first query)."""
    host, port = server, None
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        if rest:
            port = rest[1:] if rest.startswith(":") else ""  # "[::1]x": no port there
    elif server.count(":") == 1:  # one colon: "ip:port" (an IPv6 address has more)
        host, _, port = server.partition(":")
    try:
        ipaddress.ip_address(host)
        if port is not None and not (checks.is_decimal(port, 5) and 0 < int(port) < 65536):
            raise ValueError
    except ValueError:
        raise ValueError(
            'not an IP address with an optional port ("192.0.2.53", "192.0.2.53:5353", '
            '"[2001:db8::53]:53"): nameservers are addresses, not names'
        ) from None
    return server
