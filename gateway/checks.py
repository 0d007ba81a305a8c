"""Checks of single config values, shared by the config's validation (``AfterValidator``s in
``gateway.config``) and the code that uses the values: each returns the value or raises
ValueError with the words an operator needs. Also: masking a URL's password before it is
printed anywhere."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from geodb.countries import CONTINENT_NAMES

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
# An operator's name goes into the audit trail and logs as it is: a short plain word.
OPERATOR_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
DEPLOYMENT = re.compile(r"[A-Za-z0-9_.-]+")  # in Redis's keys: {geogate:<deployment>}
# "/v1/" and segments of unreserved characters, none starting with "." (no dot-segments).
API_PATH = re.compile(r"/v1(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")
# A URL's scheme and "//" (group 1) and its authority (group 2), as urlsplit finds them.
URL_AUTHORITY = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)([^/?#]*)")
QUERY_PASSWORD = re.compile(r"([?&])(password=)[^&#]*", re.IGNORECASE)
# Not in a URL's host (RFC 3986): "|" also separates a member's name from its address in
# gateway.routing.members, and a quote would break out of a zone file's string.
NOT_IN_HOST = frozenset("|<>\"'{}\\^`")
# A region's or upstream's id: one segment of an admin URL (/admin/upstreams/{id}: "/" would
# end it), left of "@" in a DNS member's name (id@host:port), a word `geogate ctl` takes as an
# argument (not starting with "-", an option's sign, nor "." : ".." is a path's parent) and
# part of a Route 53 SetIdentifier (GeoDNS export).
FLEET_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def network(cidr: str) -> str:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError("not an address or network (a CIDR such as 10.0.0.0/8)") from None
    return cidr


def continent_code(code: str) -> str:
    """One of GeoIP's seven continent codes, in upper case."""
    up = code.upper()
    if up in CONTINENT_NAMES:
        return up
    named = {name.lower(): c for c, name in CONTINENT_NAMES.items()}.get(code.strip().lower())
    said = f"; use {named}" if named else ""
    codes = ", ".join(f"{c} ({n})" for c, n in CONTINENT_NAMES.items())
    raise ValueError(f"not a continent code{said}: one of {codes}")


def http_url(url: str) -> SplitResult:
    """``url`` split, when it is an http:// or https:// URL the gateway can dial: checked here,
    a bad port or host is a one-line error at load, not a ValueError traceback where the URL
    is first used (the member's port, the DNS export's health check)."""
    if not url.startswith(("http://", "https://")):
        if url[:8].lower().startswith(("http://", "https://")):
            raise ValueError("use http:// or https:// in lower case")
        raise ValueError("use http:// or https:// (such as http://host:8000)")
    # urlsplit drops tabs and line breaks and keeps spaces: a URL with either would be one
    # URL in the config and another (or a broken request line) on the wire.
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("it has a space or control character: percent-encode it (%20)")
    try:
        parts = urlsplit(url)
    except ValueError:  # "[::1:80" (a bracket left open), "[x]" (no IPv6 address in brackets)
        raise ValueError(
            "not a valid host (an IPv6 address goes in brackets: [::1]:8000)"
        ) from None
    try:
        port = parts.port  # ValueError: not a number, or out of range
    except ValueError:
        port = 0
    if not parts.hostname:
        raise ValueError("needs a host (such as http://host:8000)")
    if NOT_IN_HOST.intersection(parts.hostname):
        raise ValueError(f"not a valid host: {parts.hostname!r}")
    # 0 or "host:" (no digits): dialled at port 80 or 443 (members.default_port), unsaid.
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("port must be a number from 1 to 65535")
    if "?" in url or "#" in url:  # a query or a fragment, even an empty one
        raise ValueError("it has a query or fragment (? or #): give the URL without them")
    return parts


def upstream_url(url: str) -> str:
    """An upstream's base URL. Its user:password, if any, is sent as Basic auth
    (gateway.client.pool): allowed here, unlike in a region's URL."""
    parts = http_url(url)
    # OpenAI clients are configured with ".../v1"; an upstream is not: the client's path
    # (/v1/chat/completions) is appended to it, and ".../v1/v1/..." is a 404 everywhere.
    if parts.path.rstrip("/").endswith("/v1"):
        raise ValueError(
            "ends in /v1: give the server's root (e.g. http://host:8000); the gateway "
            "appends the client's path, /v1/... included"
        )
    return url


def public_url(url: str) -> str:
    """Empty, or a public URL: a region gateway's (the edge Worker proxies to it and GeoDNS
    checks its url + /readyz, gateway.dns, where a bad port was a traceback and anything
    else went into the zone as it was), or the ops listener's (ops.public_url: a port out of
    range passed, and no browser's Origin could ever match it)."""
    if url and "@" in http_url(url).netloc:
        raise ValueError(
            "a public URL carries no credentials: GeoDNS health checks send none, and the "
            "exported zone would show them"
        )
    return url


def address(host: str, port: int) -> str:
    """``host:port`` as a URL's authority writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Labels of letters, digits, - and _ (a compose service's name may have one); no port.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_][a-z0-9_-]*(\.[a-z0-9_][a-z0-9_-]*)*$")


def host_name(name: str) -> str:
    """A DNS name as a Host header names it, without a port; lower case, no final dot."""
    canonical = name.lower().rstrip(".")
    if not _HOST_NAME.match(canonical):
        raise ValueError(f"{name!r} is not a host name (letters, digits, -, _ and ., no port)")
    return canonical


def listen_host(host: str) -> str:
    # The servers bind every interface for an empty host, and an empty variable
    # (GEOGATE_SERVER__HOST= in a compose file) is easily set by mistake: said, not silent.
    if not host.strip():
        raise ValueError(
            "empty: use 0.0.0.0 to listen on all interfaces (127.0.0.1: this machine only)"
        )
    return host


# A residency rule's name goes into the geogate-route header ("; residency=NAME"), log lines
# and the dashboard: no line break (a 500 on every request the rule covered), no ";" or "="
# that would read as another of the header's fields, ASCII as a header's value must be, and
# no space at either end (a header's value loses it).
RESIDENCY_NAME = re.compile(r"[!-~](?:[ -~]{0,62}[!-~])?")


def residency_name(name: str) -> str:
    if name and (not RESIDENCY_NAME.fullmatch(name) or ";" in name or "=" in name):
        raise ValueError(
            "a residency rule's name is 1-64 printable ASCII characters, no ';' or '=' and no "
            "space at either end (it is sent in the geogate-route header), or none"
        )
    return name


def model_name(name: str) -> str:
    if not name.strip():
        raise ValueError('empty model name: clients ask for a model by its name ("model": ...)')
    return name


def api_path(path: str) -> str:
    if not API_PATH.fullmatch(path):
        raise ValueError(
            "not a path under /v1/ such as /v1/tokenize (segments of letters, digits and "
            "-._~, none starting with a dot)"
        )
    return path


def is_decimal(text: str, most: int = 18) -> bool:
    """ASCII digits only, at most ``most`` of them: what int() reads as a plain count.
    str.isdigit alone takes "²", which int() refuses, and int() refuses over 4,300 digits:
    checked this way, untrusted text (a header, a query, a cookie) is a 400, never a 500."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def url_path(path: str) -> str:
    """A path the gateway appends to an upstream's URL (health, load): without its leading
    "/", "http://host:9000" + "health" is a URL whose port is "9000health"; a space or a line
    break in it, a broken request line (a line break stopped the gateway at start)."""
    if not path.startswith("/"):
        raise ValueError('must start with "/" (such as /health)')
    if "#" in path or any(c.isspace() or not c.isprintable() for c in path):
        raise ValueError("it has a space, control character or #: percent-encode it (%20)")
    return path


def fleet_id(value: str) -> str:
    if not FLEET_ID.fullmatch(value):
        raise ValueError(
            f"id {value!r}: use letters, digits and _.- (first a letter, digit or _), as ids "
            "are path segments of the admin API, DNS members' names (id@host:port) and "
            "arguments of geogate ctl"
        )
    return value


def deployment(name: str) -> str:
    """redis.deployment (and geogate ctl's --deployment): the hash tag of the fleet's keys."""
    if not DEPLOYMENT.fullmatch(name):
        raise ValueError(
            f"deployment {name!r}: use letters, digits and _.- (it is part of the fleet's keys "
            "in Redis)"
        )
    return name


def operator_name(name: str) -> str:
    if not OPERATOR_NAME.fullmatch(name):
        raise ValueError(f"operator name {name!r}: use 1-64 letters, digits and _.@-")
    return name


def cors_origin(origin: str) -> str:
    """An origin as a browser sends it (scheme://host[:port], no path), or "*" for any."""
    parts = urlsplit("") if origin == "*" else http_url(origin)
    if parts.path.strip("/") or "@" in parts.netloc:
        raise ValueError(
            "an origin is scheme://host[:port] as a browser sends it, without a path or "
            'credentials (or "*" for any)'
        )
    return origin


def header_token(token: str) -> str:
    """A token a client can present: an HTTP header carries visible ASCII only (gateway.
    config_ops). Its value is never said: the message is about its characters."""
    if any(not "!" <= c <= "~" for c in token):
        raise ValueError(
            "has a space, line break or non-ASCII character, which an HTTP header cannot "
            "carry: no request could present it (a file read into it may end in a line break)"
        )
    return token


def named_path(value: object) -> object:
    """A file setting given as text names something: an empty one (an environment override
    left blank) read as the config's own directory, and GeoIP said it was corrupt."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty: give a file's path, or leave the setting out")
    return value


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read (``strerror``), or None when it can."""
    try:
        path.open("rb").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def tls_problem(cert: Path, key: Path) -> tuple[str, str] | None:
    """What keeps a server from this certificate and key, as (the config key at fault,
    why), or None: read at start (gateway.config_file) and again by each worker as it starts
    (gateway.server), where a replacement's files may have changed since."""
    for name, p in (("tls_cert", cert), ("tls_key", key)):
        if why := unreadable(p):
            return name, f"cannot read {p}: {why}"
    return tls_unusable(cert, key)


class _Encrypted(Exception):
    """The key asked for its passphrase."""


def _no_passphrase() -> bytes:
    # Called only for an encrypted key. Without a callback OpenSSL would prompt on the
    # terminal, here and in every worker (the servers are given no passphrase).
    raise _Encrypted


def tls_unusable(cert: Path, key: Path) -> tuple[str, str] | None:
    """Why a server could not load this certificate and key, as (the config key at fault, why), or
    None when it can: checked at load, not an ssl.SSLError traceback from each worker. Both
    files are readable (``unreadable``)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert, key, password=_no_passphrase
        )
    except _Encrypted:
        return "tls_key", f"{key} is encrypted: give it without a passphrase"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "tls_key", f"{key} is not the key of the certificate in {cert}"
        if exc.reason not in (None, "PEM_LIB"):  # a key too small, a weak digest: OpenSSL's word
            return "tls_cert/tls_key", f"cannot use {cert} and {key}: {exc.reason}"
        # OpenSSL says "PEM lib" for either file: a PEM certificate in ``cert`` clears it.
        try:
            ssl.create_default_context().load_verify_locations(cafile=cert)
        except ssl.SSLError:
            return "tls_cert", f"{cert} holds no PEM certificate"
        return "tls_key", f"{key} holds no PEM private key"
    except ValueError as exc:
        return "tls_cert/tls_key", f"cannot load {cert} and {key}: {exc}"
    return None


def redis_url(url: str) -> str:
    """Empty (no Redis) or a URL ``fleet.keys.connect`` can use: checked at load, a bad one is
    a one-line start-up error, not a sync task that dies later and leaves /readyz degraded.
    The message shows the URL with its password masked. Its query (?db=, ?ssl_ca_certs=...)
    is redis-py's to read: ``fleet.keys.check_url`` has redis-py read it when the gateway
    starts, before any worker (this layer imports no I/O library)."""
    if url:
        try:
            _check_redis_url(url)
        except ValueError as exc:
            raise ValueError(f"{redact_url(url)}: {exc}") from None
    return url


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("use redis://, rediss://, unix:// or redis+sentinel://")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        return
    hosts = parts.netloc.rpartition("@")[2]
    for hp in hosts.split(",") if parts.scheme == "redis+sentinel" else [hosts]:
        try:
            one = urlsplit(f"//{hp}")
            port = one.port  # ValueError: not a number, or out of range
        except ValueError:
            port, one = None, urlsplit("//")
        if not one.hostname or (port is None and hp.endswith(":")):
            raise ValueError(f"bad host:port {hp!r}")
        if parts.scheme == "redis+sentinel" and port is None:
            raise ValueError(f"sentinel address {hp!r} needs a port")
    if parts.scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL needs /master-name")
        # fleet.keys reads no more than these: the rest was dropped, unsaid (database 0,
        # no TLS), where a redis:// URL's query is redis-py's to read.
        if len(path) > 2 or (len(path) == 2 and not is_decimal(path[1], 5)):
            raise ValueError(
                "a sentinel URL's path is /master-name or /master-name/db (db: 0-99999)"
            )
        if "?" in url:
            raise ValueError(
                "a sentinel URL takes no query (?...): the database goes in its path "
                "(/master-name/db), and TLS to sentinels is not supported"
            )
        return
    db = parts.path.strip("/")
    if db and not is_decimal(db, 5):
        # redis-py ignores a path that is no number: the gateway would use database 0, unsaid.
        raise ValueError(f"the path /{db} is not a database number (such as /0)")


def redact_url(url: str) -> str:
    """``url`` with its password masked (``redis://:****@host``), for messages and logs, and
    the rest as given. By regex, not urlsplit: urlsplit raises ValueError on a bad host
    ("http://[::1:80", the URL a config error is about), lower-cases the scheme and drops
    line breaks, and a message must show the URL as the operator wrote it."""

    def mask(m: re.Match[str]) -> str:
        netloc = m.group(2)
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:****@{hosts}" if colon else f"{user}@{hosts}"
        return m.group(1) + netloc

    masked = URL_AUTHORITY.sub(mask, url, count=1)
    masked = QUERY_PASSWORD.sub(r"\1\2****", masked)
    # What did not parse as user:password@host (a "redis:/:pw@host" typo) is masked too.
    return re.sub(r":[^:@/]*@", ":****@", masked)


def error_text(exc: BaseException) -> str:
    """An error in a few words for a log line or a message: its type, then its own words (a
    TLS certificate not verified, a read-only replica say which), any URL's password masked."""
    said = redact_url(str(exc)).strip()
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__
