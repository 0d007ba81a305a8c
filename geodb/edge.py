"""The client's address and location as signed by the edge tier (the Cloudflare Worker).

The Worker knows where the client is (``request.cf``) and who it is (the connecting IP); the
regional gateway only sees the Worker. So the Worker sends one header, signed with a secret it
shares with the regional gateways::

    geogate-client: v1;kid=k1;ts=1767225600;aud=eu.api.example.com;ip=203.0.113.7;
                    lat=51.5072;lon=-0.1276;country=GB;continent=EU;city=London;colo=LHR;
                    sig=<base64url(HMAC-SHA256(secret, everything before ";sig="))>

(one line). The signed string is the header value itself up to ``;sig=``: no re-serialisation
that two implementations could do differently. ``kid`` picks the secret (several are valid at
once, for rotation); ``ts`` (Unix seconds) bounds how long a captured header can be replayed;
``aud`` is the host the Worker sent it to, so a header captured on its way to one deployment
is worthless at another. ``city`` is percent-encoded (UTF-8); values never hold ``;`` or ``=``.

Pure: the caller hands in the keys, the accepted audiences and the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote

from geodb.clientip import IPAddress, parse_ip
from geodb.countries import CONTINENT_NAMES, EXTRA_COUNTRIES, country_continent, place
from geodb.location import Location, LocationSource

HEADER = "geogate-client"
VERSION = "v1"
_SIG = ";sig="
_REQUIRED = ("kid", "ts", "aud", "ip", "lat", "lon")
_VALUE = re.compile(r"[^;=\s]+")  # a field's value: one word without the separators


class EdgeResult(StrEnum):
    """What became of a signed-location header: the ``result`` label of
    ``geogate_edge_location``. Only ``ok`` is believed."""

    OK = "ok"
    NO_KEYS = "no_keys"  # this gateway has no edge.keys: it believes no edge header
    MALFORMED = "malformed"  # not a v1 header, a field missing or unreadable
    UNKNOWN_KEY = "unknown_key"  # kid names no key of ours (rotated out, or forged)
    BAD_SIGNATURE = "bad_signature"  # tampered with, or signed with another secret
    EXPIRED = "expired"  # ts outside the clock-skew window (a replay, or a wrong clock)
    WRONG_AUDIENCE = "wrong_audience"  # signed for another host: replayed from elsewhere


@dataclass(frozen=True, slots=True)
class EdgeClient:
    """The client as the edge saw it, once the signature checked out."""

    ip: IPAddress
    location: Location
    key_id: str
    colo: str | None = None  # the Cloudflare data centre that took the request


@dataclass(frozen=True, slots=True)
class Verdict:
    result: EdgeResult
    client: EdgeClient | None = None
    detail: str = ""  # why it was not believed, for a debug log line


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signature(secret: str, signed: str) -> str:
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256)
    return _b64url(mac.digest())


def sign(secret: str, fields: Sequence[tuple[str, str]]) -> str:
    """The header value for ``fields`` in order (``kid``, ``ts``, ``aud``, ``ip``, ``lat``,
    ``lon`` and any of ``country``, ``continent``, ``city``, ``colo``), as the Worker builds
    it. ``city`` is percent-encoded here; other values must be single words."""
    parts = [VERSION]
    for name, value in fields:
        text = quote(value, safe="") if name == "city" else value
        if not _VALUE.fullmatch(text):
            raise ValueError(f"edge header field {name}={value!r} is empty or holds ; = or space")
        parts.append(f"{name}={text}")
    signed = ";".join(parts)
    return f"{signed}{_SIG}{signature(secret, signed)}"


def _fields(value: str) -> tuple[str, dict[str, str], str] | None:
    """(signed string, fields, signature), or None when the value is not a v1 header."""
    cut = value.rfind(_SIG)
    if cut < 0 or not value.startswith(VERSION + ";"):
        return None
    signed, sig = value[:cut], value[cut + len(_SIG) :]
    fields: dict[str, str] = {}
    for part in signed.split(";")[1:]:
        name, eq, text = part.partition("=")
        if not eq or name in fields or not _VALUE.fullmatch(text):
            return None
        fields[name] = text
    if any(name not in fields for name in _REQUIRED):
        return None
    return signed, fields, sig


def _coordinate(text: str, bound: float) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) and -bound <= v <= bound else None


def _known_country(code: str | None) -> str | None:
    """A country code a residency rule could name (ISO 3166-1, or Kosovo's XK as MaxMind
    writes it), else None. Cloudflare also says T1 (Tor) and XX (unknown): taken as a
    country, such a code matched no rule, and the client was confined to nothing."""
    if code is None or code.upper() in EXTRA_COUNTRIES or country_continent(code) is not None:
        return code
    return None


def _known_continent(code: str | None) -> str | None:
    """One of GeoIP's seven continent codes, else None (Cloudflare's T1 for Tor is none)."""
    return code if code is not None and code.upper() in CONTINENT_NAMES else None


def _client(fields: Mapping[str, str], key_id: str) -> EdgeClient | None:
    try:
        ip = parse_ip(fields["ip"])
    except ValueError:
        return None
    lat, lon = _coordinate(fields["lat"], 90), _coordinate(fields["lon"], 180)
    if lat is None or lon is None:
        return None
    country = _known_country(fields.get("country"))
    country, continent = place(country, _known_continent(fields.get("continent")))
    city = unquote(fields["city"]) if "city" in fields else None
    loc = Location(lat, lon, country, continent, city, None, LocationSource.EDGE)
    return EdgeClient(ip, loc, key_id, fields.get("colo"))


def verify(
    value: str,
    keys: Mapping[str, str],
    audiences: Collection[str],
    now: float,
    max_skew_s: float,
) -> Verdict:
    """Believe ``value`` only when it is signed by one of ``keys`` (key id -> secret), for one
    of ``audiences`` (hosts, compared without case), within ``max_skew_s`` of ``now`` (Unix
    seconds) either way. The signature is checked before any signed field is read."""
    if not keys:
        return Verdict(EdgeResult.NO_KEYS, detail="no edge.keys configured")
    parsed = _fields(value)
    if parsed is None:
        return Verdict(
            EdgeResult.MALFORMED, detail="not a v1 header with kid, ts, aud, ip, lat, lon"
        )
    signed, fields, sig = parsed
    kid = fields["kid"]
    secret = keys.get(kid)
    if secret is None:
        return Verdict(EdgeResult.UNKNOWN_KEY, detail=f"key id {kid!r} is not among edge.keys")
    # Constant time: how much of a forged signature matched must not show in the timing.
    if not hmac.compare_digest(signature(secret, signed).encode(), sig.encode("utf-8", "replace")):
        return Verdict(EdgeResult.BAD_SIGNATURE, detail=f"signature does not match key {kid!r}")
    ts = _coordinate(fields["ts"], math.inf)
    if ts is None:
        return Verdict(EdgeResult.MALFORMED, detail="ts is not a number")
    if abs(now - ts) > max_skew_s:
        return Verdict(EdgeResult.EXPIRED, detail=f"signed {now - ts:+.0f} s from now")
    aud = fields["aud"].lower()
    if aud not in {a.lower() for a in audiences}:
        return Verdict(EdgeResult.WRONG_AUDIENCE, detail=f"signed for {aud!r}")
    client = _client(fields, kid)
    if client is None:
        return Verdict(EdgeResult.MALFORMED, detail="ip, lat or lon is not readable")
    return Verdict(EdgeResult.OK, client)
