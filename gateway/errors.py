"""The gateway's errors: one root, in the words of the domain. Which HTTP status, OpenAI error
type and code each becomes is decided in one place, ``gateway.http.errors``, at the boundary.

    GatewayError                      anything the gateway reports to a client or an operator
     ├── ConfigError                  a config file or override is invalid (start-up)
     ├── CannotListen                 an address to listen on is taken or not here (start-up)
     ├── PlanInvalid                  a ``geogate plan`` input file is wrong (one line: where, why)
     ├── OpsUnauthorized              missing or wrong ops.token on the ops listener
     ├── OpsHostRefused               a tokenless loopback ops listener asked for by a name
     ├── AuthThrottled                too many wrong tokens from one address: wait and retry
     ├── LoopDetected                 a request came through MAX_HOPS gateways: a loop
     ├── GatewayOverloaded            this worker holds server.max_streams requests: retry soon
     ├── GatewayShuttingDown          cut by the drain's deadline (server.drain_timeout_s): retry
     ├── RequestInvalid               the client's request cannot be served as sent
     │    ├── BodyTooLarge
     │    ├── UnsupportedEncoding     a Content-Encoding the gateway cannot decode
     │    ├── BodyTimeout             the body did not arrive within the read timeout
     │    ├── HeadTimeout             the request line and headers did not, either
     │    ├── HeadersTooLarge
     │    ├── UnknownEndpoint
     │    ├── MethodNotAllowed        a known endpoint, another method (``allow`` lists them)
     │    ├── ModelNotFound
     │    └── ModelNotAllowedHere     a residency rule keeps the client from every region serving it
     ├── AdminError
     │    ├── AdminDisabled           no admin token is configured
     │    ├── Unauthorized            missing or wrong admin token
     │    └── Forbidden               a dashboard change without its CSRF token, or cross-site
     ├── FleetError
     │    ├── FleetConfigInvalid      an operator's change or a fleet document does not validate
     │    ├── NothingToRestore        a restore where the gateway routes on Redis's document
     │    └── SharedStateUnavailable  Redis is unreachable for a change that needs it
     ├── NoHealthyUpstream            routing found nothing usable: retry later
     └── UpstreamError                the upstreams tried failed
          ├── UpstreamBusy            every one tried was at capacity (429)
          ├── UpstreamTimeout
          └── UpstreamFailed
               └── StreamInterrupted  failed after bytes reached the client

Each error's message must say what to do about it: for an API client it is all there is.
"""

from __future__ import annotations

import sys

# clipped and SHOWN_MAX_CHARS live with the model server's errors, whose one-line CLI parser
# this package's commands use too: both packages' errors cut what they echo the same way.
from backend.errors import SHOWN_MAX_CHARS as SHOWN_MAX_CHARS
from backend.errors import clipped as clipped


def past_limits(exc: ValueError | RecursionError) -> str:
    """A TOML or JSON parser's limit that a document went past, in words: CPython's own message
    advises calling sys.set_int_max_str_digits, of no help to whoever wrote the file."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    if "digits" in str(exc):  # int()'s limit on the digits it converts
        return f"a number of over {sys.get_int_max_str_digits():,} digits"
    return str(exc)


class GatewayError(Exception):
    def __init__(
        self, message: str, *, retry_after_s: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # when the client may usefully try again
        self.param = param  # the request's field at fault, as OpenAI's errors name it


class ConfigError(GatewayError):
    """One line; the values it echoes are cut (``clipped``), wherever it is shown."""

    def __init__(self, message: str) -> None:
        super().__init__(clipped(message))


class CannotListen(GatewayError):
    pass


class PortInUse(CannotListen):
    """Another process listens there: a start's failure, but no fault of a config checked
    while the gateway it replaces runs (``gateway --check``)."""


class PlanInvalid(GatewayError):
    pass


class OpsUnauthorized(GatewayError):
    pass


class OpsHostRefused(GatewayError):
    pass


class AuthThrottled(GatewayError):
    pass


class LoopDetected(GatewayError):
    pass


class GatewayOverloaded(GatewayError):
    pass


class GatewayShuttingDown(GatewayError):
    pass


class RequestInvalid(GatewayError):
    pass


class BodyTooLarge(RequestInvalid):
    pass


class UnsupportedEncoding(RequestInvalid):
    def __init__(self, message: str, accepted: tuple[str, ...]) -> None:
        super().__init__(message)
        self.accepted = accepted  # the content codings the gateway does decode


class BodyTimeout(RequestInvalid):
    pass


class HeadTimeout(RequestInvalid):
    pass


class HeadersTooLarge(RequestInvalid):
    pass


class UnknownEndpoint(RequestInvalid):
    pass


class TransferCodingUnsupported(RequestInvalid):
    pass


class VersionUnsupported(RequestInvalid):
    pass


class MethodUnsupported(RequestInvalid):
    pass


class MethodNotAllowed(RequestInvalid):
    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow  # the methods the endpoint does take


class ModelNotFound(RequestInvalid):
    pass


class ModelNotAllowedHere(RequestInvalid):
    """Not "retry later": the config serves the model only outside the client's residency
    regions, so every retry would be refused alike until an operator changes it."""


class AdminError(GatewayError):
    pass


class AdminDisabled(AdminError):
    pass


class Unauthorized(AdminError):
    pass


class Forbidden(AdminError):
    pass


class FleetError(GatewayError):
    pass


class FleetConfigInvalid(FleetError):
    pass


class AuditUnwritable(FleetError):
    pass


class NothingToRestore(FleetError):
    pass


class SharedStateUnavailable(FleetError):
    pass


class NoHealthyUpstream(GatewayError):
    pass


class UpstreamError(GatewayError):
    pass


class UpstreamBusy(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamFailed(UpstreamError):
    pass


class StreamInterrupted(UpstreamFailed):
    pass
