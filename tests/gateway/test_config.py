from __future__ import annotations

from pathlib import Path

import pytest

from gateway import defaults
from gateway.config import load_config
from gateway.errors import ConfigError

GOOD = """
[gateway]
region = "eu-central"
[[regions]]
id = "eu-central"
latitude = 50.11
longitude = 8.68
[[upstreams]]
id = "eu-1"
region = "eu-central"
url = "http://127.0.0.1:9000"
models = ["m"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_named_ones(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.timeouts.first_byte_s == defaults.FIRST_BYTE_TIMEOUT_S
    assert cfg.retry.max_attempts == defaults.MAX_ATTEMPTS
    assert cfg.router.panic_threshold == defaults.PANIC_THRESHOLD
    assert cfg.server.max_body_bytes == defaults.MAX_BODY_BYTES
    assert cfg.gateway.origin == "self"


def test_example_config_in_the_repo_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "gateway.toml", env={})
    assert len(cfg.regions) >= 3 and cfg.upstreams


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "GEOGATE_SERVER__PORT": "9999",
        "GEOGATE_TIMEOUTS__CONNECT_S": "0.5",
        "GEOGATE_GATEWAY__TRUSTED_PROXIES": '["10.0.0.0/8"]',
        "OTHER": "x",
    }
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert (cfg.server.port, cfg.timeouts.connect_s) == (9999, 0.5)
    assert cfg.gateway.trusted_proxies == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda t: t.replace("50.11", "150.11"), "regions[0].latitude"),
        (
            lambda t: t.replace('url = "http://127.0.0.1:9000"', 'url = "ftp://x"'),
            "upstreams[0].url",
        ),
        (lambda t: t + "[timeouts]\nconect_s = 1\n", "timeouts.conect_s: unknown key"),
        (lambda t: t + "[timeouts]\nconnect_s = -1\n", "timeouts.connect_s"),
        (
            lambda t: t.replace('region = "eu-central"\n[[', 'region = "mars"\n[[', 1),
            "gateway.region 'mars'",
        ),
        (
            lambda t: t.replace('region = "eu-central"\nurl', 'region = "x"\nurl'),
            "'x' is not defined",
        ),
        (lambda t: t + "[[residency]]\nregions = ['eu-central']\n", "countries or continents"),
        (lambda t: t + "[[residency]]\ncountries=['DE']\nregions = ['nope']\n", "'nope'"),
        (lambda t: t.replace("[gateway]", "[gateway\n"), "invalid TOML"),
        (lambda t: t + t.split("[[upstreams]]")[1].join(["[[upstreams]]", ""]), "appears twice"),
    ],
)
def test_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, mutate: object, expect: str
) -> None:
    path = write(tmp_path, mutate(GOOD))  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert expect in msg and str(path) in msg and "\n" not in msg


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GEOGATE_SERVER__PORT: server\.port"):
        load_config(write(tmp_path, GOOD), env={"GEOGATE_SERVER__PORT": "eighty"})
    with pytest.raises(ConfigError, match="GEOGATE_UPSTREAMS: not valid JSON"):
        load_config(write(tmp_path, GOOD), env={"GEOGATE_UPSTREAMS": "[{oops"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


def test_relative_paths_resolve_from_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + '[geoip]\ndatabase = "geo/city.mmdb"\n'), env={})
    assert cfg.geoip.database == tmp_path / "geo" / "city.mmdb"
