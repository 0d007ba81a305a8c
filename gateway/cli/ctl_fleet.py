"""The two ways ``geogate ctl`` reaches a fleet, behind one interface (``Fleet``):

- ``GatewayFleet`` (``--gateway URL --token T``): a gateway's ops listener. Changes go through
  its admin API, so the audit's "who" is the operator whose token was sent (issue 9's rule);
  it works without Redis too (one gateway, in-memory state), and ``top`` reads the live
  ``/routing-table`` and ``/metrics`` there, and asks the dashboard's impact API what a change
  would move before it is made (``impact``).
- ``RedisFleet`` (``--redis URL``): the fleet's document in Redis, directly. For when no
  gateway is up, or before any is; whoever holds the Redis URL is trusted with everything, so
  ``--who`` is taken as said.

Every failure is a ``CLIError``: one line naming what to fix.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from redis.exceptions import RedisError

from gateway import checks
from gateway.checks import redact_url, redis_url
from gateway.cli.errors import CLIError
from gateway.config import Config
from gateway.errors import FleetConfigInvalid, FleetError
from gateway.fleet import config_doc, config_io
from gateway.fleet.keys import Keys, connect, url_problem

T = TypeVar("T")
CTL_TIMEOUT_S = 3.0
GATEWAY_ENV = "GEOGATE_CTL_GATEWAY"
TOKEN_ENV = "GEOGATE_CTL_TOKEN"
OPS_TOKEN_ENV = "GEOGATE_CTL_OPS_TOKEN"
# Where the impact API sends clients left with no upstream (503): its ``REFUSED``, repeated
# here so that ctl does not import the dashboard's server side; a test holds the two equal.
NOWHERE = "nowhere"
# What to do about the gateway's error codes (gateway.http.errors), besides its own message.
HINTS = {
    "invalid_admin_token": f"give your operator token: --token or {TOKEN_ENV}",
    "invalid_ops_token": f"give the gateway's ops.token: --ops-token or {OPS_TOKEN_ENV}",
}


class Fleet(Protocol):
    async def config(self) -> tuple[dict[str, Any], int]: ...
    async def change(
        self, kind: str, target: str, changes: dict[str, Any], doc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Apply ``changes`` to ``target``; ``doc`` is the fleet document when the caller has
        just read it (config()), so it is not read again."""
        ...

    async def impact(
        self, kind: str, target: str, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """What ``changes`` to ``target`` would move (the impact API's answer: ``text``,
        ``arriving``...), asked before making them; None when nobody can say."""
        ...

    async def audit(self, count: int) -> list[dict[str, str]]: ...
    async def restore(self) -> dict[str, Any]:
        """Put the document the gateway routes on back over one in Redis it refuses; the
        audit entry."""
        ...

    async def close(self) -> None: ...


class RedisFleet:
    def __init__(
        self, url: str, deployment: str, who: str | None, restart_grace_s: float | None = None
    ) -> None:
        try:
            redis_url(url)
        except ValueError as exc:
            raise CLIError(f"--redis {exc}") from None  # the URL in it has its password masked
        if why := url_problem(url):  # the query, as redis-py reads it
            raise CLIError(f"--redis {redact_url(url)}: {why}")
        self.url = url
        self.keys = Keys(deployment)
        user = os.environ.get("USER", "")  # as --who (gateway.cli.ctl checks it), or "ctl"
        self.who = who or (user if checks.OPERATOR_NAME.fullmatch(user) else "ctl")
        self.r = connect(url, CTL_TIMEOUT_S)
        # The fleet's redis.restart_grace_s: Redis's document holds no gateway's redis section.
        self.restart_grace_s = restart_grace_s

    async def config(self) -> tuple[dict[str, Any], int]:
        """The fleet's document, checked as a gateway checks it: one a gateway refuses (not
        JSON, a weight of -5) is said in one line, not a traceback."""
        doc, version = await self._io(config_io.load(self.r, self.keys))
        if doc is None:
            raise CLIError(
                f"no fleet config in Redis for deployment {self.keys.deployment!r}: a running "
                "gateway puts its own back within seconds of a Redis restart (retry then); "
                "with none running, start a gateway with --redis first (it seeds the config)"
            )
        self._base(doc, version)
        return doc, version

    def _base(self, doc: dict[str, Any], version: int | None = None) -> Config:
        try:
            return config_doc.base_config(doc)
        except FleetConfigInvalid as exc:
            at = f", version {version}" if version is not None else ""
            where = f"deployment {self.keys.deployment!r}{at}"
            raise CLIError(
                str(exc).replace(
                    "invalid fleet config:", f"invalid fleet config in Redis ({where}):"
                )
                + "; the gateways refuse it too and route on the one before"
            ) from None

    async def change(
        self, kind: str, target: str, changes: dict[str, Any], doc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if doc is None:
            doc, _ = await self.config()
        # Only a template: the update reads the document again, under WATCH.
        base = self._base(doc)
        if self.restart_grace_s is not None:
            grace = base.redis.model_copy(update={"restart_grace_s": self.restart_grace_s})
            base = base.model_copy(update={"redis": grace})
        update = config_io.update_region if kind == "region" else config_io.update_upstream
        _, _, entry = await self._io(update(self.r, self.keys, base, target, changes, self.who))
        return dict(entry)

    async def impact(
        self, kind: str, target: str, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        return None  # the traffic is counted by gateways; Redis holds no window of it

    async def restore(self) -> dict[str, Any]:
        raise CLIError(
            "restore goes through a gateway (--gateway URL): it puts back the document that "
            "gateway routes on, which Redis alone does not hold"
        )

    async def audit(self, count: int) -> list[dict[str, str]]:
        rows = await self._io(config_io.read_audit(self.r, self.keys, count))
        if not rows:
            await self.config()  # no fleet under that name (a mistyped --deployment): said so
        return rows

    async def close(self) -> None:
        await self.r.aclose()

    async def _io(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except FleetError as exc:  # a change refused; Redis lost data (the gateways say so)
            raise CLIError(str(exc)) from None
        except (RedisError, OSError) as exc:
            raise CLIError(
                f"cannot reach Redis at {redact_url(self.url)}: {checks.error_text(exc)}"
            ) from None
        except (ValueError, TypeError) as exc:  # redis-py's own words for what it cannot use
            raise CLIError(
                f"cannot use Redis at {redact_url(self.url)}: {checks.error_text(exc)}"
            ) from None


def _why(exc: BaseException) -> str:
    """A connection failure in a few words ("connection refused"), not aiohttp's repr."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {CTL_TIMEOUT_S:g} s"
    if isinstance(exc, ValueError):  # aiohttp's InvalidURL too, whose text is the URL alone
        return "not a valid URL"
    err = getattr(exc, "os_error", exc)
    if isinstance(err, ssl.SSLError):  # its errno is OpenSSL's code: 1 read "not permitted"
        why = err.reason or err.strerror or "failed"
        return f"TLS {why.lower().replace('_', ' ')} (is it http://, not https://?)"
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno).lower()
    return str(exc) or type(exc).__name__


def gateway_url(url: str) -> str:
    """``url`` without its trailing slash, or a CLIError naming what is wrong with it: checked
    before any request (as an upstream's URL is, checks.http_url), as aiohttp's own words for
    a bad URL are the URL alone."""
    try:
        checks.http_url(url)
    except ValueError as exc:
        raise CLIError(
            f"--gateway {url!r} is not a valid URL: {exc}; give a gateway's ops listener, such "
            "as http://127.0.0.1:9180"
        ) from None
    return url.rstrip("/")


class GatewayFleet:
    def __init__(self, url: str, token: str | None, ops_token: str | None) -> None:
        self.url = gateway_url(url)
        # Checked here: one with a line break (read from a file) failed as "not a valid URL".
        for flag, value in (("--token", token), ("--ops-token", ops_token)):
            try:
                checks.header_token(value or "")
            except ValueError as exc:
                raise CLIError(f"{flag} {exc}") from None
        self.token = token
        self.ops_token = ops_token
        self.stale_since: float | None = None  # the gateway's answer to config(): see show
        self.refused: str | None = None  # ...and why it ignores Redis's document, if it does
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CTL_TIMEOUT_S), raise_for_status=False
        )

    async def config(self) -> tuple[dict[str, Any], int]:
        body = await self._json("GET", "/admin/config", admin=True)
        self.stale_since = body.get("stale_since")
        self.refused = body.get("refused")  # a fleet document in Redis the gateway refuses
        return body["config"], int(body["version"])

    async def restore(self) -> dict[str, Any]:
        body = await self._json("POST", "/admin/config/restore", admin=True, data="")
        entry: dict[str, Any] = body["audit"]
        return entry

    async def change(
        self, kind: str, target: str, changes: dict[str, Any], doc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        path = f"/admin/{kind}s/{quote(target, safe='')}"
        body = await self._json("PATCH", path, admin=True, data=json.dumps(changes))
        entry: dict[str, Any] = body["audit"]
        return entry

    async def impact(
        self, kind: str, target: str, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The dashboard's answer (GET /dashboard/api/impact, with the admin token), or None
        when it cannot be had: a gateway without the dashboard, or one that does not answer.
        Never a CLIError: the change itself then says what is wrong, in its own words."""
        query = {kind: target, **{k: _query_value(v) for k, v in changes.items()}}
        try:
            body = await self._json("GET", "/dashboard/api/impact?" + urlencode(query), admin=True)
        except CLIError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return None
        if not isinstance(body.get("arriving"), dict):
            return None
        return body

    async def audit(self, count: int) -> list[dict[str, str]]:
        body = await self._json("GET", f"/admin/audit?count={count}", admin=True)
        rows: list[dict[str, str]] = body["entries"]
        return rows

    async def routing_table(self) -> dict[str, Any]:
        table: dict[str, Any] = await self._json("GET", "/routing-table", admin=False)
        return table

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics", admin=False))[1]

    async def close(self) -> None:
        await self.session.close()

    async def _json(self, method: str, path: str, *, admin: bool, data: str = "") -> Any:
        status, text = await self._request(method, path, admin=admin, data=data)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise CLIError(
                f"{self.url}{path} answered HTTP {status} with no JSON: is --gateway a geogate "
                "ops listener (ops.port, 9180 by default)?"
            ) from None

    async def _request(
        self, method: str, path: str, *, admin: bool, data: str = ""
    ) -> tuple[int, str]:
        token = self.token if admin else self.ops_token
        if admin and not token:
            raise CLIError(f"give your operator token: --token or {TOKEN_ENV}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if data:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, self.url + path, data=data or None, headers=headers
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise CLIError(
                f"cannot reach the gateway at {self.url}: {_why(exc)}; is it running, and is "
                "--gateway its ops listener (ops.port, 9180 by default)?"
            ) from None
        if status >= 400:
            raise CLIError(self._refusal(status, text))
        return status, text

    def _refusal(self, status: int, text: str) -> str:
        try:
            err = json.loads(text)["error"]
            message, code = str(err["message"]), str(err.get("code", ""))
        except (json.JSONDecodeError, KeyError, TypeError):
            return f"{self.url} answered HTTP {status}: is --gateway a geogate ops listener?"
        hint = HINTS.get(code)
        if code == "unknown_url" and ("/v1/" in message or "public one" in message):
            hint = "is --gateway the public listener? ctl talks to the ops listener, ops.port"
        return f"the gateway refused: {message}" + (f" ({hint})" if hint else "")


def _query_value(value: object) -> str:
    """The impact API's spelling: drained=true|false, numbers as numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
