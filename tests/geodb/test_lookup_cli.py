"""``geogate geodb lookup`` (gateway/cli/commands.py) on what geodb answers, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gateway.cli.main import main


def db_with(path: Path, record: dict[str, object]) -> Path:
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    w.insert_network(IPSet(["10.0.0.0/8"]), record)
    w.to_db_file(str(path))
    return path


def test_model_without_config_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was ignored: there is no route to show without the config's upstreams."""
    db = db_with(tmp_path / "c.mmdb", {"country": {"iso_code": "GB"}})
    with pytest.raises(SystemExit) as info:
        main(["geodb", "lookup", "10.1.2.3", "--db", str(db), "--model", "x"])
    out, err = capsys.readouterr()
    assert (info.value.code, out) == (2, "")
    assert err == "geogate: --model needs --config FILE (the model is routed with its upstreams)\n"


@pytest.mark.parametrize(
    "location",
    [
        {"latitude": float("nan"), "longitude": 1.5},  # printed "latitude": NaN (no JSON)
        {"latitude": 999.0, "longitude": "abc"},  # describe() raised on the string
    ],
)
def test_unusable_coordinates_print_the_country_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], location: dict[str, object]
) -> None:
    db = db_with(tmp_path / "c.mmdb", {"country": {"iso_code": "GB"}, "location": location})
    main(["geodb", "lookup", "10.1.2.3", "--db", str(db), "--json"])
    doc = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)  # NaN: no JSON
    assert doc["location"]["country"] == "GB"
    assert (doc["location"]["latitude"], doc["location"]["longitude"]) == (51.51, -0.13)
    main(["geodb", "lookup", "10.1.2.3", "--db", str(db)])
    assert capsys.readouterr().out.startswith("10.1.2.3: GB (51.51, -0.13) source=geoip")
