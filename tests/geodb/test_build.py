from __future__ import annotations

from pathlib import Path

import geoip2.database
import pytest

from geodb.build import build_from_csv
from geodb.errors import BuildError


def test_build_reads_back_as_a_city_database(tmp_path: Path) -> None:
    src = tmp_path / "nets.csv"
    src.write_text(
        "network,country,continent,latitude,longitude,city\n"
        "# overrides for the office\n"
        "10.20.0.0/16,DE,EU,52.52,13.40,Berlin\n"
        "2001:db8::/32,JP,AS,35.68,139.77\n"
    )
    out = tmp_path / "out.mmdb"
    assert build_from_csv(src, out) == 2
    with geoip2.database.Reader(str(out)) as r:
        berlin = r.city("10.20.3.4")
        assert (berlin.city.name, berlin.country.iso_code, berlin.continent.code) == (
            "Berlin",
            "DE",
            "EU",
        )
        assert berlin.location.latitude == 52.52
        assert r.city("2001:db8::5").country.iso_code == "JP"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("10.0.0.0/8,DE,EU,1", "expected network,country"),
        ("10.0.0.300/8,DE,EU,1,2", "not a network"),
        ("10.0.0.0/8,Germany,EU,1,2", "alpha-2"),
        ("10.0.0.0/8,DE,XX,1,2", "continent"),
        ("10.0.0.0/8,DE,EU,north,2", "numbers"),
        ("10.0.0.0/8,DE,EU,91,2", "out of range"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, row: str, message: str) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("network,country,continent,latitude,longitude\n" + row + "\n")
    with pytest.raises(BuildError, match=message) as info:
        build_from_csv(src, tmp_path / "o.mmdb")
    assert f"{src}:2" in str(info.value)
    assert not (tmp_path / "o.mmdb").exists()
