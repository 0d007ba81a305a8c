"""Config input past what the parsers and the schema take: refused in one line (ConfigError)
naming the file or variable, never a traceback, a hang or a value taken in silence; and the
values such lines echo, cut to a readable length."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional, get_args, get_origin

import pytest
from pydantic import BaseModel, Field, TypeAdapter

from gateway import defaults as d
from gateway.config import Config
from gateway.config_file import load_config
from gateway.config_routing import takes_a_number
from gateway.errors import SHOWN_MAX_CHARS, ConfigError, clipped
from tests.gateway.test_config import GOOD, write

DIGITS = "9" * 5000  # past int()'s 4,300 digits
DEEP = "[" * 3000 + "]" * 3000  # past the parsers' recursion
LONG_ID = "a " + "x" * 100_000


def config_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (GOOD + f"[retry]\nmax_attempts = {DIGITS}\n", "a number of over 4,300 digits"),
        (GOOD.replace("[gateway]\n", f"[gateway]\ntrusted_proxies = {DEEP}\n"), "nested too"),
    ],
)
def test_toml_past_the_parsers_limits_is_one_line(tmp_path: Path, text: str, why: str) -> None:
    # tomllib's ValueError ("use sys.set_int_max_str_digits()") and RecursionError were
    # tracebacks: only its TOMLDecodeError was caught.
    path = write(tmp_path, text)
    assert config_error(path).startswith(f"config error in {path}: invalid TOML: {why}")


@pytest.mark.parametrize(
    ("value", "why"),
    [("[" * 100_000, "nested too deeply to read"), (f"[{DIGITS}]", "a number of over 4,300")],
)
def test_json_overrides_past_the_parsers_limits_are_one_line(
    tmp_path: Path, value: str, why: str
) -> None:
    msg = config_error(write(tmp_path, GOOD), {"GEOGATE_UPSTREAMS": value})
    assert msg.startswith(f"config error in GEOGATE_UPSTREAMS: not valid JSON: {why}"), msg


def test_a_config_that_is_no_regular_file_is_refused_unread(tmp_path: Path) -> None:
    # /dev/zero was read until memory ran out; a FIFO waited for a writer forever.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo, tmp_path):
        assert config_error(path) == (
            f"config error: {path} is not a regular file (a directory, device or pipe)"
        )


def test_a_config_file_past_its_size_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    with path.open("r+b") as f:  # sparse: no 16 MiB written
        f.truncate(d.CONFIG_MAX_BYTES + 1)
    assert config_error(path) == f"config error: {path} is over 16 MiB, past any config file"
    monkeypatch.setattr(d, "CONFIG_MAX_BYTES", len(GOOD))  # the bound itself is taken
    assert load_config(write(tmp_path, GOOD), env={}).gateway.region == "eu-central"
    write(tmp_path, GOOD + "\n")
    assert config_error(path).endswith("past any config file")


BIG = "1e300"  # was taken: no timeout at all, or health checks that never came
OUT_OF_RANGE = [
    ("[server]\nworkers = 100000\n", "server.workers", d.WORKERS_MAX),
    ("[retry]\nmax_attempts = 99999999999999999999999\n", "retry.max_attempts", d.MAX_ATTEMPTS_MAX),
    # Past 2**63 a float was refused already ("exceeded maximum size"); one under it was not.
    ("slots = 1e18\n", "upstreams[0].slots", d.SLOTS_MAX),  # appended to the upstream
    ("slots = 99999999999999999999999\n", "upstreams[0].slots", d.SLOTS_MAX),
    ("[server]\nmax_body_bytes = 1e18\n", "server.max_body_bytes", d.MAX_BODY_BYTES_MAX),
    ("[server]\nmax_streams = 1e18\n", "server.max_streams", d.MAX_STREAMS_MAX),
    ("[server]\nmax_connections = 1e18\n", "server.max_connections", d.MAX_CONNECTIONS_MAX),
    (
        "[health]\ncompletion_probe_max_tokens = 1e18\n",
        "health.completion_probe_max_tokens",
        d.COMPLETION_PROBE_MAX_TOKENS_MAX,
    ),
    *(
        (f"[{section}]\n{also}{key} = {BIG}\n", f"{section}.{key}", limit)
        for section, key, limit, also in (
            ("timeouts", "first_byte_s", d.DURATION_MAX_S, ""),
            ("timeouts", "total_s", d.DURATION_MAX_S, ""),
            ("timeouts", "response_s", d.DURATION_MAX_S, ""),
            ("timeouts", "idle_s", d.DURATION_MAX_S, ""),
            ("timeouts", "connect_s", d.CONNECTION_WAIT_MAX_S, ""),
            ("server", "keepalive_s", d.CONNECTION_WAIT_MAX_S, ""),
            ("server", "head_timeout_s", d.CONNECTION_WAIT_MAX_S, ""),
            ("server", "body_timeout_s", d.CONNECTION_WAIT_MAX_S, ""),
            ("server", "drain_timeout_s", d.DURATION_MAX_S, ""),
            ("health", "interval_s", d.INTERVAL_MAX_S, ""),
            ("load", "poll_interval_s", d.INTERVAL_MAX_S, "max_age_s = 7200\n"),
            ("discovery", "interval_s", d.INTERVAL_MAX_S, ""),
            ("geoip", "reload_interval_s", d.INTERVAL_MAX_S, ""),
            ("redis", "refresh_interval_s", d.INTERVAL_MAX_S, "observation_ttl_s = 7200\n"),
            ("redis", "restart_grace_s", d.DURATION_MAX_S, ""),
            ("edge", "max_skew_s", d.DURATION_MAX_S, ""),
        )
    ),
]


@pytest.mark.parametrize(("text", "key", "limit"), OUT_OF_RANGE)
def test_values_past_their_bounds_are_refused(
    tmp_path: Path, text: str, key: str, limit: float
) -> None:
    path = write(tmp_path, GOOD + text)
    msg = config_error(path)
    assert msg.startswith(
        f"config error in {path}: {key}: Input should be less than or equal to {limit:.0f} "
    ), msg
    # The bound itself is taken (as a whole number where the key is one).
    at = f"{limit:.0f}" if isinstance(limit, int) else f"{limit:.1f}"
    value = text.rpartition("= ")[2].strip()
    assert load_config(write(tmp_path, GOOD + text.replace(value, at)), env={})


def _numeric_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """Every key of ``model`` (and the models within it) whose schema is a number, as pydantic
    itself has it: with the next numeric key, the test below covers it unasked."""
    keys = []
    for name, field in model.model_fields.items():
        kind: Any = field.annotation
        inner = get_args(kind)[0] if get_origin(kind) is tuple else kind
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            keys += _numeric_keys(inner, f"{prefix}{name}{'[0]' if inner is not kind else ''}.")
            continue
        schema = TypeAdapter(kind).json_schema()
        types_ = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
        if types_ & {"integer", "number"}:
            keys.append(f"{prefix}{name}")
    return keys


NUMERIC_KEYS = _numeric_keys(Config, "")


def test_the_numeric_keys_are_found() -> None:
    assert {"server.port", "upstreams[0].weight", "redis.restart_grace_s"} <= set(NUMERIC_KEYS)
    assert "geoip.default.latitude" in NUMERIC_KEYS and len(NUMERIC_KEYS) > 40


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_no_numeric_key_takes_true(tmp_path: Path, key: str) -> None:
    # Lax mode took TOML's true as 1: redis.restart_grace_s (a float or none) did, the check
    # having compared the annotation with int and float.
    *tables, name = key.replace("[0]", "").split(".")
    if tables == ["regions"] and f"\n{name} = " in GOOD:  # its latitude and longitude
        text = re.sub(rf"(?m)^{name} = .*$", f"{name} = true", GOOD, count=1)
    elif tables == ["upstreams"] or tables == ["regions"]:
        anchor = 'models = ["m"]\n' if tables == ["upstreams"] else "longitude = 8.68\n"
        text = GOOD.replace(anchor, f"{anchor}{name} = true\n", 1)
    else:
        text = GOOD + f"[{'.'.join(tables)}]\n{name} = true\n"
    msg = config_error(write(tmp_path, text))
    assert f"{key}: a number, not true or false" in msg, msg


def test_takes_a_number_sees_through_optional_and_annotated() -> None:
    assert takes_a_number(Optional[int])  # noqa: UP045 (the typing spelling too)
    assert takes_a_number(Annotated[float, Field(ge=0)] | None)
    assert not takes_a_number(bool) and not takes_a_number(str | None)


def test_a_deployment_is_letters_digits_and_marks(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, GOOD + '[redis]\ndeployment = "a b"\n'))
    assert "redis.deployment: deployment 'a b': use letters, digits and _.-" in msg, msg


@pytest.mark.parametrize(
    ("text", "env", "echoed"),
    [
        (GOOD, {"GEOGATE_SERVER__PORT": DIGITS}, "(got '" + "9" * (SHOWN_MAX_CHARS - 1) + "…')"),
        (GOOD.replace('"eu-1"', f'"{LONG_ID}"'), {}, f"id '{LONG_ID[:99]}…': use letters"),
        (GOOD + f"[health]\nhealthy_threshold = -{'1' * 4000}\n", {}, "(got -" + "1" * 100),
    ],
)
def test_values_echoed_in_an_error_are_cut(
    tmp_path: Path, text: str, env: dict[str, str], echoed: str
) -> None:
    # A 5,000-digit override was echoed whole: a line of 5,000 characters.
    msg = config_error(write(tmp_path, text), env)
    assert echoed in msg and len(msg) < 1000, msg


def test_clipped_cuts_echoed_values_alone() -> None:
    long = "w" * 1000
    line = f"the region's id {long!r}: use letters; got {'7' * 500} ('a', \"it's\")"
    out = clipped(line)
    assert out == (f"the region's id '{'w' * 99}…': use letters; got {'7' * 100}… ('a', \"it's\")")
    assert clipped(out) == out  # once cut, kept
    assert clipped(f"{'x' * 99!r}") == f"{'x' * 99!r}"  # short enough: whole
