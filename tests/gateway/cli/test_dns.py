"""``geogate dns export`` as a user runs it: files written, errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.gateway.dns.configs import toml

URLS = {"eu-central": "https://eu-central.api.example.com", "us-east": "http://127.0.0.12:8080"}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(toml(URLS))
    return p


def export(cfg: Path, *args: str) -> list[str]:
    return ["dns", "export", "--config", str(cfg), "--zone", "example.com", "--name", "api", *args]


def test_route53_to_stdout(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(export(cfg, "--format", "route53", "--ttl", "60"))
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "api.example.com." and doc["ttl"] == 60
    assert set(doc["health_checks"]) == {"eu-central", "us-east", "ap-southeast"}


def test_powerdns_to_a_file(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zone"
    main(export(cfg, "--format", "powerdns", "--ns", "ns.example.net", "--out", str(out)))
    text = out.read_text()
    assert "$ORIGIN example.com." in text and "@ IN NS ns.example.net." in text
    assert "https://eu-central.api.example.com/readyz" in text
    err = capsys.readouterr().err
    assert f"wrote {out}: api.example.com. over 3 region(s)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "powerdns", "--ttl", "0"], "geogate: dns export: ttl 0 must be at least 1 s"),
        (["--format", "bind"], "invalid choice: 'bind'"),
    ],
)
def test_bad_arguments_are_one_line(
    cfg: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(export(cfg, *args))
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_without_addresses_says_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        toml(URLS)
        .replace('addresses = ["127.0.0.11"]', "addresses = []")
        .replace('addresses = ["127.0.0.12"]', "addresses = []")
        .replace('addresses = ["127.0.0.13"]', "addresses = []")
    )
    with pytest.raises(SystemExit):
        main(export(cfg, "--format", "powerdns"))
    err = capsys.readouterr().err
    assert err.startswith(f"geogate: config error in {cfg}: no region has addresses")
    assert err.count("\n") == 1
