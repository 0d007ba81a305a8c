from __future__ import annotations

import csv
import os
import stat
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


def _csv(tmp_path: Path, *rows: str) -> Path:
    src = tmp_path / "nets.csv"
    src.write_text("network,country,continent,latitude,longitude,city\n" + "\n".join(rows) + "\n")
    return src


@pytest.mark.parametrize("broad_first", [True, False])
def test_a_more_specific_row_wins_whatever_the_order(tmp_path: Path, broad_first: bool) -> None:
    broad = "10.0.0.0/8,FR,EU,48.86,2.35,Paris"
    specific = "10.1.0.0/16,DE,EU,52.52,13.40,Berlin"
    v6_all = "::/0,US,NA,40.71,-74.01,New York"  # covers IPv4 too (::/96): the broadest
    rows = [v6_all, broad, specific] if broad_first else [specific, broad, v6_all]
    out = tmp_path / "out.mmdb"
    assert build_from_csv(_csv(tmp_path, *rows), out) == 3
    with geoip2.database.Reader(str(out)) as r:
        assert r.city("10.1.2.3").city.name == "Berlin"
        assert r.city("10.2.0.1").city.name == "Paris"
        assert r.city("192.0.2.1").city.name == "New York"
        assert r.city("2001:db8::1").city.name == "New York"


def test_an_ipv4_mapped_row_is_found_by_its_ipv4_addresses(tmp_path: Path) -> None:
    # Kept at ::ffff:10.0.0.0/104 it was written and never found: lookups read a mapped
    # address as IPv4, in the ::/96 part of the tree.
    out = tmp_path / "out.mmdb"
    rows = ["::ffff:10.0.0.0/104,FR,EU,48.86,2.35,Paris", "2001:db8::/32,JP,AS,35.68,139.77"]
    assert build_from_csv(_csv(tmp_path, *rows), out) == 2
    with geoip2.database.Reader(str(out)) as r:
        assert r.city("10.1.2.3").city.name == "Paris"
        assert r.city("2001:db8::5").country.iso_code == "JP"  # other IPv6: where written


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ["10.0.0.0/8,DE,EU,1,2", "10.0.0.0/8,FR,EU,1,2"],
            r"nets\.csv:3: network 10\.0\.0\.0/8 is already on line 2",
        ),
        (  # the same network, written another way: still one network
            ["10.0.0.0/8,DE,EU,1,2", "::a00:0/104,FR,EU,1,2"],
            r"nets\.csv:3: network ::a00:0/104 is already on line 2",
        ),
        (  # IPv4-mapped: the IPv4 network too (lookups read a mapped address as IPv4)
            ["10.0.0.0/8,DE,EU,1,2", "::ffff:10.0.0.0/104,FR,EU,1,2"],
            r"nets\.csv:3: network ::ffff:10\.0\.0\.0/104 is already on line 2",
        ),
        (
            ["10.0.0.5/8,DE,EU,1,2"],
            r"nets\.csv:2: 10\.0\.0\.5/8 has host bits set \(the network is 10\.0\.0\.0/8\)",
        ),
        (["10.0.0.0/8,ZZ,EU,1,2"], r"nets\.csv:2: country 'ZZ' is not an ISO 3166-1 alpha-2"),
        (["10.0.0.0/8,ÄÖ,EU,1,2"], r"nets\.csv:2: country 'ÄÖ' is not an ISO 3166-1 alpha-2"),
        # The code to use, as the gateway's config says it (it said "such as DE, GB, US")
        (["10.0.0.0/8,UK,EU,1,2"], r"nets\.csv:2: country 'UK' is not an ISO .* code; use GB$"),
        (["10.0.0.0/8,DEU,EU,1,2"], r"nets\.csv:2: country 'DEU' is not an ISO .* code; use DE$"),
        (["10.0.0.0/8,DE,EU,1,2,Ber\x00lin"], r"nets\.csv:2: city 'Ber\\x00lin' holds a control"),
        (["10.0.0.0/8,DE,EU,1,2,Ber\x1blin"], r"nets\.csv:2: city 'Ber\\x1blin' holds a control"),
    ],
)
def test_conflicting_or_bad_rows_are_refused_by_line(
    tmp_path: Path, rows: list[str], message: str
) -> None:
    out = tmp_path / "o.mmdb"
    with pytest.raises(BuildError, match=message) as info:
        build_from_csv(_csv(tmp_path, *rows), out)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_kosovo_as_geoip_databases_write_it(tmp_path: Path) -> None:
    # XK is no ISO 3166-1 code, yet GeoIP writes it; lower case is read as upper
    assert build_from_csv(_csv(tmp_path, "10.0.0.0/8,xk,EU,42.66,21.17"), tmp_path / "o") == 1
    with geoip2.database.Reader(str(tmp_path / "o")) as r:
        assert r.city("10.1.2.3").country.iso_code == "XK"


def test_a_csv_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "latin1.csv"
    src.write_bytes("# office\n10.0.0.0/8,DE,EU,1,2,Köln\n".encode("latin-1"))
    with pytest.raises(BuildError, match=rf"^{src}:2: not UTF-8 text \(byte 0xf6\): save"):
        build_from_csv(src, tmp_path / "o.mmdb")


def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    src = _csv(tmp_path, "10.0.0.0/8,DE,EU,1,2")
    with pytest.raises(BuildError, match=r"^cannot write /nonexistent/out\.mmdb: No such file"):
        build_from_csv(src, Path("/nonexistent/out.mmdb"))
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(BuildError, match=rf"^cannot write {folder}: Is a directory$"):
        build_from_csv(src, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "nets.csv"]  # no .tmp


def test_a_symlinked_output_is_written_through(tmp_path: Path) -> None:
    """``out.mmdb -> rel/current.mmdb``: the rename replaced the link with a plain file and
    left the target, which the gateway may be reading, as it was."""
    (tmp_path / "rel").mkdir()
    target = city_db_at(tmp_path / "rel" / "current.mmdb", "Paris")
    link = tmp_path / "link.mmdb"
    link.symlink_to(Path("rel") / "current.mmdb")
    assert build_from_csv(_csv(tmp_path, "10.0.0.0/8,DE,EU,52.52,13.40,Berlin"), link) == 1
    assert link.is_symlink() and os.readlink(link) == str(Path("rel") / "current.mmdb")
    with geoip2.database.Reader(str(target)) as r:
        assert r.city("10.1.2.3").city.name == "Berlin"
    dangling = tmp_path / "new.mmdb"
    dangling.symlink_to("rel/next.mmdb")  # a link to a file yet to be: created
    build_from_csv(tmp_path / "nets.csv", dangling)
    assert dangling.is_symlink() and (tmp_path / "rel" / "next.mmdb").is_file()
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["current.mmdb", "next.mmdb"]


def city_db_at(path: Path, city: str) -> Path:
    src = path.with_suffix(".csv")
    src.write_text(f"10.0.0.0/8,FR,EU,48.86,2.35,{city}\n")
    build_from_csv(src, path)
    src.unlink()
    return path


def test_an_output_that_is_not_a_regular_file_is_refused_untouched(tmp_path: Path) -> None:
    """As root, ``geodb build nets.csv /dev/null`` renamed the database over the device node.
    A FIFO stands in for it here (a test must not touch a real device)."""
    src = _csv(tmp_path, "10.0.0.0/8,DE,EU,1,2")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BuildError, match=rf"^cannot write {fifo}: it is a FIFO, not a regular"):
        build_from_csv(src, fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    with pytest.raises(BuildError, match=rf"^cannot write {link}: it is a FIFO \({fifo}\), not"):
        build_from_csv(src, link)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "nets.csv"]


def test_a_planted_tmp_link_is_not_followed(tmp_path: Path) -> None:
    """The temporary file was OUT.tmp, opened as it was found: a link there (to a file root
    may write) got the database."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.mmdb.tmp").symlink_to(victim)
    build_from_csv(_csv(tmp_path, "10.0.0.0/8,DE,EU,1,2"), tmp_path / "out.mmdb")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nets.csv",
        "out.mmdb",
        "out.mmdb.tmp",
        "victim",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # said it had host bits set
            "fe80::%eth0/64,GB,EU,51,0\n",
            r"nets\.csv:1: fe80::%eth0/64 is a scoped address \(%eth0\).*not allowed$",
        ),
        (  # str.splitlines broke the line at U+2028: the error was on line 3 of 2
            "10.0.0.0/8,GB,EU,51,0,Lon\u2028don\n10.0.0.0/8,GB,EU,51,0\n",
            r"nets\.csv:1: city 'Lon\\u2028don' holds a control character or line break$",
        ),
        (
            "10.0.0.0/8,GB,EU,51,0\n11.0.0.0/8,GB,EU,51,0,Lon\u2029don\n",
            r"nets\.csv:2: city 'Lon\\u2029don' holds",
        ),
        (  # a line break in a quoted city was dropped: "London"
            '# offices\n10.0.0.0/8,GB,EU,51,0,"Lon\ndon"\n',
            r"nets\.csv:2: a line break inside a quoted field \(is a quote left open\?\)$",
        ),
        ('10.0.0.0/8,GB,EU,51,0,"Lon\r\ndon"\n', r"nets\.csv:1: a line break inside a quoted"),
        ('10.0.0.0/8,GB,EU,51,0,"London\n', r"nets\.csv:1: a line break inside a quoted"),
        (  # the next row is then numbered as the file numbers it
            "10.0.0.0/8,GB,EU,51,0\r11.0.0.0/8,GB,EU,91,0\r",
            r"nets\.csv:2: latitude 91\.0 / longitude 0\.0 out of range$",
        ),
        (
            '10.0.0.0/8,GB,EU,51,0,"' + "x" * (csv.field_size_limit() + 1) + '"\n',
            r"nets\.csv:1: field larger than field limit",
        ),
    ],
)
def test_csv_lines_are_the_files(tmp_path: Path, text: str, message: str) -> None:
    src = tmp_path / "nets.csv"
    src.write_text(text, newline="")
    with pytest.raises(BuildError, match=message) as info:
        build_from_csv(src, tmp_path / "o.mmdb")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.mmdb").exists()
