"""The gateway's config file: one TOML file, ``GEOGATE_*`` environment overrides, validated
up front against the schema in ``gateway.config``.

Overrides name a key path with ``__`` between levels: ``GEOGATE_SERVER__PORT=9000``,
``GEOGATE_TIMEOUTS__FIRST_BYTE_S=20``, ``GEOGATE_UPSTREAMS='[{...}]'`` (JSON for lists and
tables). Every error is one line naming the file (or variable), the key and what is wrong.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, ValidationError

from gateway import checks
from gateway import defaults as d
from gateway.config import Config
from gateway.errors import ConfigError, past_limits

ENV_PREFIX = "GEOGATE_"
ENV_CONFIG_FILE = "GEOGATE_CONFIG"  # the file path itself, not an override
# geogate ctl's own settings (GEOGATE_CTL_GATEWAY, _TOKEN, _OPS_TOKEN), not overrides: an
# operator's shell that has them set can still start a gateway.
ENV_CTL_PREFIX = "GEOGATE_CTL_"


def _env_value(raw: str) -> Any:
    # JSON for lists and tables, and a JSON string for a value that starts with [ or { (a
    # token), which could not be given otherwise. Not an empty value: "" is a key set to
    # nothing.
    if raw.startswith(("[", "{", '"')):
        return json.loads(raw)
    return raw  # pydantic's lax mode turns "9000" into 9000 and "true" into True


def _key_path(name: str) -> list[str]:
    """The key path a variable names: sections and keys in lower case (variables are written
    in upper case), the keys of a table that is a mapping as written (admin.tokens' operator
    names and edge.keys' key ids are case-sensitive: GEOGATE_EDGE__KEYS__K1 is key "K1")."""
    model: Any = Config
    path = []
    for part in name.split("__"):
        if model is None:  # inside a mapping (or past a value): as written
            path.append(part)
            continue
        key = part.lower()
        path.append(key)
        field = model.model_fields.get(key)
        kind = field.annotation if field is not None else None
        model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return path


def _is_list(path: list[str]) -> bool:
    """Whether the schema has a list (a TOML array of values or tables) at ``path``."""
    model: Any = Config
    kind: Any = None
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        kind = field.annotation
        model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return get_origin(kind) in (tuple, list)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply overrides in place; returns key path -> variable name, for error messages."""
    origins: dict[str, str] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        if name.startswith(ENV_CTL_PREFIX):
            continue
        path = _key_path(name[len(ENV_PREFIX) :])
        if "" in path:  # GEOGATE___PORT: "unknown key (a typo?)", naming none
            raise ConfigError(
                f"config error in {name}: an empty key in the name (a section and its key are "
                "joined by two underscores: GEOGATE_SERVER__PORT)"
            )
        try:
            value = _env_value(raw)
        except json.JSONDecodeError as exc:
            # A token or host that starts with "[" or "{" is read as JSON too: say how to
            # give it as a string, or the operator is left guessing why a token is JSON.
            raise ConfigError(
                f"config error in {name}: not valid JSON: {exc.msg} (a value that starts with "
                "[, { or a double quote is read as JSON; a string that does is written as one: "
                f"{name}='\"{raw[:1]}...\"')"
            ) from exc
        except (ValueError, RecursionError) as exc:  # valid JSON past the parser's limits
            raise ConfigError(
                f"config error in {name}: not valid JSON: {past_limits(exc)}"
            ) from None
        node = data
        for i, part in enumerate(path[:-1]):
            above = path[: i + 1]
            child = node.get(part)
            # A list's items have no names to override one by one (upstreams.0.weight).
            if isinstance(child, list) or (child is None and _is_list(above)):
                whole = ENV_PREFIX + "__".join(above).upper()
                raise ConfigError(
                    f"config error in {name}: {'.'.join(above)} is a list: override it whole "
                    f"as JSON ({whole}='[...]')"
                )
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"config error in {name}: {'.'.join(above)} is not a table")
            node = child
        node[path[-1]] = value
        origins[".".join(path)] = name
    return origins


def _origin(origins: Mapping[str, str], key: str, source: str) -> str:
    """The variable that set ``key`` or a table or list above it (GEOGATE_UPSTREAMS for
    upstreams[0].url), else the file."""
    for path, name in origins.items():
        if key == path or key.startswith((f"{path}.", f"{path}[")):
            return name
    return source


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def rel(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    updates: dict[str, Any] = {}
    if (db := rel(cfg.geoip.database)) is not None:
        updates["geoip"] = cfg.geoip.model_copy(update={"database": db})
    server: dict[str, Any] = {}
    for key in ("tls_cert", "tls_key"):
        if (p := rel(getattr(cfg.server, key))) is not None:
            server[key] = p
    if server:
        updates["server"] = cfg.server.model_copy(update=server)
    if (state := rel(cfg.redis.state_file)) is not None:
        updates["redis"] = cfg.redis.model_copy(update={"state_file": state})
    return cfg.model_copy(update=updates) if updates else cfg


# Keys whose values are never repeated in a message: they hold passwords and tokens.
_SECRET_KEYS = ("redis.url", "admin.", "ops.token", "edge.keys")


def parse_config(
    data: dict[str, Any], source: str, env: Mapping[str, str] | None = None, base: Path = Path()
) -> Config:
    origins = _apply_env(data, os.environ if env is None else env)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        key = _loc(first["loc"])
        where = _origin(origins, key, source)
        if where == source:
            # A check across keys (a section's, or the whole config's: key "") that overrides
            # took part in: the file alone may be right, so they are named too.
            applied = [n for p, n in origins.items() if not key or p.startswith(f"{key}.")]
            if applied:
                where = f"{source} with {', '.join(applied)}"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif first["type"] == "missing":
            msg = "required key is missing"
        elif (
            "input" in first
            and not isinstance(first["input"], dict | list)
            and not key.startswith(_SECRET_KEYS)
        ):
            got = first["input"]
            if isinstance(got, str) and key.endswith(".url"):
                got = checks.redact_url(got)  # an upstream's URL may carry credentials
            msg += f" (got {got!r})"
        more = _more(errors[1:])
        prefix = f"{key}: " if key else ""
        raise ConfigError(f"config error in {where}: {prefix}{msg}{more}") from None
    cfg = _resolve_paths(cfg, base)
    _check_tls(cfg, origins, source)
    _check_state_file(cfg, origins, source)
    return cfg


MORE_KEYS_NAMED = 3  # of the errors after the first, the keys named in its line


def _more(rest: list[Any]) -> str:
    """The other errors' keys, after the first's message: "(and 1 more)" sent the operator
    back to the file once per error without saying where the next one was."""
    if not rest:
        return ""
    keys = [_loc(e["loc"]) or "the config as a whole" for e in rest[:MORE_KEYS_NAMED]]
    also = ", ..." if len(rest) > MORE_KEYS_NAMED else ""
    return f" (and {len(rest)} more, at {', '.join(keys)}{also})"


def _check_state_file(cfg: Config, origins: Mapping[str, str], source: str) -> None:
    """redis.state_file's directory, at start: a missing one was a warning at every change,
    and the restart it was set for routed on the file."""
    path = cfg.redis.state_file
    if path is None:
        return
    where = _origin(origins, "redis.state_file", source)
    if not path.parent.is_dir():
        raise ConfigError(
            f"config error in {where}: redis.state_file: no directory {path.parent}; make it"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"config error in {where}: redis.state_file: cannot write in {path.parent}"
        )
    if path.is_dir():  # never written, silently
        raise ConfigError(
            f"config error in {where}: redis.state_file: {path} is a directory; name a file "
            "in it (fleet.json)"
        )
    # The first sync replaces the file whole: it replaced the gateway's own config file, and
    # a device node with a regular file, when either was named here.
    if path.exists() and not _a_state_file(path):
        raise ConfigError(
            f"config error in {where}: redis.state_file: {path} exists and is not a state "
            "file geogate wrote, which the first sync would replace; name a file of its own "
            "(fleet.json)"
        )


STATE_FILE_MAX_BYTES = 64 << 20  # a fleet document is kilobytes; a larger file is another's


def _a_state_file(path: Path) -> bool:
    """An empty regular file, or one holding a state file's JSON (fleet.last_known)."""
    try:
        if not path.is_file() or path.stat().st_size > STATE_FILE_MAX_BYTES:
            return False
        text = path.read_text()
        if not text.strip():
            return True
        data = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"fleet", "doc"} <= data.keys()


def _check_tls(cfg: Config, origins: Mapping[str, str], source: str) -> None:
    """The TLS files are read by the server at start, in each worker, where a bad one is an
    ssl.SSLError traceback: checked here instead, in one line naming the file at fault."""
    cert, key = cfg.server.tls_cert, cfg.server.tls_key
    if cert is None or key is None:  # both or neither (ServerSection)
        return
    if problem := checks.tls_problem(cert, key):
        name, why = problem
        where = _origin(origins, f"server.{name.partition('/')[0]}", source)
        raise ConfigError(f"config error in {where}: server.{name}: {why}")


def read_config_bytes(path: Path) -> bytes:
    """The file's bytes, from a regular file of at most CONFIG_MAX_BYTES: /dev/zero was read
    until memory ran out, and a FIFO waited for a writer forever. OSError: cannot be opened;
    ValueError: what the file is instead, in words."""
    # O_NONBLOCK: a FIFO opens without waiting for a writer (then refused); no effect on files.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("is not a regular file (a directory, device or pipe)")
    with os.fdopen(fd, "rb") as f:
        data = f.read(d.CONFIG_MAX_BYTES + 1)
    if len(data) > d.CONFIG_MAX_BYTES:
        raise ValueError(f"is over {d.CONFIG_MAX_BYTES >> 20} MiB, past any config file")
    return data


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        # utf-8-sig: a byte order mark (as some Windows editors save UTF-8) is not TOML's.
        text = read_config_bytes(path).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # TOML is UTF-8 (a file saved as Latin-1 or UTF-16, say)
        raise ConfigError(f"config error: {path} is not UTF-8 text") from None
    except ValueError as exc:
        raise ConfigError(f"config error: {path} {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error in {path}: invalid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # TOML that passes tomllib's own checks
        raise ConfigError(f"config error in {path}: invalid TOML: {past_limits(exc)}") from None
    return parse_config(data, str(path), env, base=path.resolve().parent)
