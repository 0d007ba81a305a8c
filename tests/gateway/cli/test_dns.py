"""``geogate dns export`` as a user runs it: files written, errors in one line."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.cli import dns as dns_cli
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
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["name"] == "api.example.com." and doc["ttl"] == 60
    assert set(doc["health_checks"]) == {"eu-central", "us-east", "ap-southeast"}
    # Checked at loopback addresses, which AWS refuses: said, one line each, after the export.
    # eu-central is checked by its host name: nothing to say.
    assert err.splitlines() == [
        f"dns export: warning: region {region}'s health check is at {address}, an address "
        "Route 53's checkers cannot reach (local, private, shared or reserved): AWS refuses "
        "that health check; give the region a public address or host name"
        for region, address in (("us-east", "127.0.0.12"), ("ap-southeast", "127.0.0.13"))
    ]


def test_powerdns_to_a_file(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zone"
    main(
        export(
            cfg, "--format", "powerdns", "--ns", "ns.example.net.", "--ns", "ns2", "--out", str(out)
        )
    )
    text = out.read_text()
    assert "$ORIGIN example.com." in text and "@ IN NS ns.example.net." in text
    assert "@ IN NS ns2.example.com." in text  # relative, as --name is: it was ns2. (the root)
    assert "https://eu-central.api.example.com/readyz" in text
    err = capsys.readouterr().err
    assert f"wrote {out}: api.example.com. over 3 region(s)" in err
    # ns2 is in the zone with no address: said once, in a line that says how to give one.
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == [
        "dns export: warning: name server ns2.example.com. is in the zone and has no address "
        "in it: resolvers that ask the zone for it get none; give --ns ns2=ADDRESS, or a name "
        "server outside the zone (--ns ns1.example.net.)"
    ]
    # Two labels under the zone: the warning names it in full, as --ns takes it.
    main(export(cfg, "--format", "powerdns", "--ns", "ns1.dns.example.com", "--out", str(out)))
    assert "give --ns ns1.dns.example.com.=ADDRESS" in capsys.readouterr().err
    main(
        export(
            cfg, "--format", "powerdns", "--ns", "ns1.dns.example.com.=192.0.2.9", "--out", str(out)
        )
    )
    assert "warning" not in capsys.readouterr().err
    main(export(cfg, "--format", "powerdns", "--ns", "ns2=192.0.2.53", "--out", str(out)))
    assert "warning" not in capsys.readouterr().err
    assert "ns2.example.com. IN A 192.0.2.53" in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "powerdns", "--ttl", "0"], "geogate: dns export: ttl 0 must be at least 1 s"),
        (["--format", "bind"], "invalid choice: 'bind'"),
        (
            ["--format", "powerdns", "--ttl", "99999999999"],
            "geogate: dns export: ttl 99999999999 must be at most 2147483647 s",
        ),
        (
            ["--format", "powerdns", "--check-interval", "5000"],
            "geogate: dns export: check interval 5000 must be at most 3600 s",
        ),
        (  # Route 53 checks every 10 or 30 s: 31 to 3600 were quietly made 30
            ["--format", "route53", "--check-interval", "31"],
            "geogate: dns export: --check-interval 31: Route 53 checks every 10 or 30 s; give "
            "one of those (a shorter interval is taken up to the next)",
        ),
        (
            ["--format", "powerdns", "--name", "api.example.org."],
            "geogate: dns export: name 'api.example.org.' is not in zone example.com.",
        ),
        (  # PowerDNS's own settings: taken and ignored for Route 53, silently
            ["--format", "route53", "--check-timeout", "3", "--ns", "ns1.example.com"],
            "geogate: dns export: --check-timeout and --ns are for --format powerdns",
        ),
        (
            ["--format", "route53", "--ns", "ns1.example.com"],
            "geogate: dns export: --ns is for --format powerdns",
        ),
        (  # an NS record names a host; pdns took "192.0.2.53." for a name
            ["--format", "powerdns", "--ns", "192.0.2.53"],
            "geogate: dns export: nameserver '192.0.2.53' is an address: --ns takes the name",
        ),
        (
            ["--format", "powerdns", "--ns", "ns2", "--ns", "NS2.example.com."],
            "geogate: dns export: nameserver ns2.example.com. is given twice (--ns)",
        ),
        (  # pdns refused the whole zone ("name too long to append")
            ["--format", "powerdns", "--name", ".".join(["a" * 63] * 4)],
            "geogate: dns export: name aaaa",
        ),
        (  # the name fits; Route 53's chain names ("_o1-3-v4." before it) do not
            [
                "--format",
                "route53",
                "--zone",
                ".".join(["a" * 63] * 3) + ".com",
                "--name",
                "d" * 50,
            ],
            "geogate: dns export: Route 53's failover link _o1-3-v4.ddd",
        ),
        (  # the zone, the name and ns1 fit; the SOA's hostmaster.ZONE does not
            ["--format", "powerdns", "--zone", ".".join(["a" * 63] * 3 + ["b" * 52])],
            "geogate: dns export: the SOA's mailbox hostmaster.aaa",
        ),
        (  # 0 is a value given, not none
            ["--format", "route53", "--check-timeout", "0"],
            "geogate: dns export: --check-timeout is for --format powerdns",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    cfg: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(export(cfg, *args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1  # argparse's own too (it printed its usage block first)


def test_the_zone_as_the_name_is_the_apex(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = export(cfg, "--format", "powerdns")
    args[args.index("--name") + 1] = "example.com"
    main(args)
    text = capsys.readouterr().out
    assert "@ 30 IN LUA A (" in text and "example.com.example.com" not in text


@pytest.mark.parametrize("fmt", ["powerdns", "route53"])
def test_out_as_the_config_it_reads_is_refused_and_the_config_kept(
    cfg: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # It replaced the config with the zone, unsaid: the gateway's next start said "invalid TOML".
    before = cfg.read_text()
    link = tmp_path / "same.toml"
    link.symlink_to(cfg)
    for out in (cfg, link):
        with pytest.raises(SystemExit) as info:
            main(export(cfg, "--format", fmt, "--out", str(out)))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert (
            err
            == f"geogate: dns export: --out {out} is the config file it reads; give another path\n"
        )
    assert cfg.read_text() == before


def test_out_through_a_symlink_writes_the_file_it_points_to(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zone file linked into the server's directory stays linked: the new zone replaces
    the file the link points to, not the link."""
    target = tmp_path / "zones" / "example.com.zone"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "example.com.zone"
    link.symlink_to(target)
    main(export(cfg, "--format", "powerdns", "--out", str(link)))
    assert link.is_symlink() and link.resolve() == target
    assert "$ORIGIN example.com." in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["example.com.zone"]  # no .tmp


def test_out_to_a_pipe_writes_into_it(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something not a regular file (a pipe here; /dev/stdout, a device, for a user) is
    written as it is: renamed over, it would be replaced by a file (as root, /dev/stdout)."""
    fifo = tmp_path / "zone.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    try:
        main(export(cfg, "--format", "powerdns", "--out", str(fifo)))
    finally:
        reader.join(5)  # it reads to the writer's close
        if reader.is_alive():  # still waiting for a writer (the export failed): give it one
            with open(fifo, "w"):
                pass
            reader.join(5)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and "$ORIGIN example.com." in got[0]


def test_a_country_route53_cannot_place_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gw.toml"
    rules = [
        {"name": "eu", "continents": ["EU"], "regions": ["eu-central"]},
        {"name": "xk", "countries": ["XK"], "regions": ["us-east"]},
    ]
    cfg.write_text(toml(URLS, residency=rules))
    with pytest.raises(SystemExit) as info:
        main(export(cfg, "--format", "route53"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"geogate: config error in {cfg}: route53: country XK is not in")
    assert err.count("\n") == 1
    main(export(cfg, "--format", "powerdns"))  # PowerDNS looks the continent up per query
    assert "XK={" in capsys.readouterr().out


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
    assert "--format route53 --alias-regions" in err
    assert err.count("\n") == 1


def test_alias_regions_export_a_config_without_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy/'s gateways list their regions with a url and no addresses (an ALB's change):
    Route 53 with --alias-regions answers each by an A link its Terraform makes an alias to
    the region's ALB. PowerDNS needs addresses: the option is refused there, in one line."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(toml(URLS, addresses={r: [] for r in ("eu-central", "us-east", "ap-southeast")}))
    out = tmp_path / "route53.json"
    main(export(cfg, "--format", "route53", "--alias-regions", "--out", str(out)))
    assert "over 3 region(s) (3 as load balancer aliases)" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    links = [s for s in doc["record_sets"] if "GeogateRegion" in s]
    assert {s["GeogateRegion"] for s in links} == {"eu-central", "us-east", "ap-southeast"}
    assert all(s["Type"] == "A" and "ResourceRecords" not in s for s in links)
    with pytest.raises(SystemExit) as info:
        main(export(cfg, "--format", "powerdns", "--alias-regions"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("geogate: dns export: --alias-regions is for --format route53")
    assert err.count("\n") == 1


def test_a_zone_whose_group_cannot_be_kept_stays_readable(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced by a user outside the file's group (no chown allowed): root:pdns 0640 became
    user:user 0640, which pdns could not read. The mode is widened to 0644's reads then."""
    out = tmp_path / "example.com.zone"
    out.write_text("old\n")
    out.chmod(0o640)
    other_gid = os.stat(out).st_gid + 1  # a group the file, as written anew, does not get

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    real_stat = os.stat
    monkeypatch.setattr(
        os,
        "stat",
        lambda p, *a, **k: (
            _with_gid(real_stat(p, *a, **k), other_gid)
            if os.fspath(p) == os.fspath(out)
            else real_stat(p, *a, **k)
        ),
    )
    main(export(cfg, "--format", "powerdns", "--out", str(out)))
    assert stat.S_IMODE(real_stat(out).st_mode) == 0o644


def _with_gid(st: os.stat_result, gid: int) -> os.stat_result:
    fields = list(st)
    fields[stat.ST_GID] = gid
    return os.stat_result(fields)


def test_a_replaced_zone_keeps_its_mode_owner_and_group(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """640 root:nogroup became 644 root:root (600 under umask 077): pdns, running as its own
    user, could no longer read it. A new file is 644 whatever the umask."""
    out = tmp_path / "example.com.zone"
    out.write_text("old\n")
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(out, *owner)
    out.chmod(0o640)
    main(export(cfg, "--format", "powerdns", "--out", str(out)))
    st = out.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, *owner)
    assert "$ORIGIN example.com." in out.read_text()
    fresh = tmp_path / "fresh.zone"
    old_umask = os.umask(0o077)
    try:
        main(export(cfg, "--format", "powerdns", "--out", str(fresh)))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


def test_the_temporary_file_is_not_out_dot_tmp(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory at blocked.zone.tmp made the export fail, saying "blocked.zone: Is a
    directory". The temporary file has a name of its own now, and a failure names where."""
    out = tmp_path / "blocked.zone"
    (tmp_path / "blocked.zone.tmp").mkdir()
    main(export(cfg, "--format", "powerdns", "--out", str(out)))
    assert "$ORIGIN example.com." in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blocked.zone",
        "blocked.zone.tmp",
        "gw.toml",
    ]
    missing = tmp_path / "nope" / "x.zone"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(export(cfg, "--format", "powerdns", "--out", str(missing)))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"geogate: cannot write {missing}: a temporary file in {missing.parent}: No such file "
        "or directory\n"
    )


def test_the_serial_grows_though_two_exports_share_a_second(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both got the time as their serial: a secondary kept the first zone."""
    out = tmp_path / "example.com.zone"
    monkeypatch.setattr(dns_cli, "time", SimpleNamespace(time=lambda: 1_800_000_000.5))
    serials = []
    for ttl in ("30", "60"):
        main(export(cfg, "--format", "powerdns", "--ttl", ttl, "--out", str(out)))
        found = re.search(r"^@ IN SOA \S+ \S+ (\d+) ", out.read_text(), re.M)
        assert found
        serials.append(int(found[1]))
    assert serials == [1_800_000_000, 1_800_000_001]


@pytest.mark.parametrize("where", ["dir", "empty"])
def test_out_to_a_directory_is_one_line(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The previous serial was read with open() on the directory's descriptor: a traceback."""
    out = str(tmp_path) if where == "dir" else ""
    with pytest.raises(SystemExit) as info:
        main(export(cfg, "--format", "powerdns", "--out", out))
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # "" was the current folder (Path("")): now refused as empty before anything is read
    assert ("directory" if where == "dir" else "--out: is empty") in err.lower(), err


def test_an_order_of_ninety_regions_is_cut_between_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each failover order was one Lua token: at 88 regions its {1,2,...} passed a zone
    string's 254 bytes, and the export ended in a RuntimeError's traceback."""
    cfg = tmp_path / "gw.toml"
    regions = [
        # One place (a few orders, a zone that fits) and many regions: a long order.
        f'[[regions]]\nid = "r{i:02}"\nlatitude = 50.1\nlongitude = 8.7\n'
        f'url = "http://127.0.{i // 200 + 1}.{i % 200 + 1}:8080"\n'
        f'addresses = ["127.0.{i // 200 + 1}.{i % 200 + 1}"]\n'
        for i in range(90)
    ]
    cfg.write_text('[gateway]\nregion = "r00"\n\n' + "\n".join(regions))
    main(export(cfg, "--format", "powerdns", "--ns", "ns.example.net."))
    zone = capsys.readouterr().out
    strings = re.findall(r'^  "(.*)"$', zone, re.M)
    assert strings and all(len(s.encode()) <= 255 for s in strings)
    lua = "".join(strings)
    # An order of all ninety, cut between regions where a line ends (a space there).
    first = re.search(r"local o=\{ ?\{([\d, ]*)\}", lua)
    assert first, lua[:400]
    assert sorted(int(n) for n in first[1].replace(" ", "").split(",")) == list(range(1, 91))


@pytest.mark.parametrize("char", ["'", '"', "\\"])
def test_a_region_url_the_lua_cannot_carry_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], char: str
) -> None:
    """A quote ended the health URL's Lua string (a record failing for every client); a
    backslash reached the check doubled."""
    cfg = tmp_path / "gw.toml"
    url = f"https://eu-central.api.example.com/o{char}neil"
    # A JSON string is a TOML basic string: the quote and the backslash escaped as TOML reads.
    cfg.write_text(toml({**URLS, "eu-central": url}).replace(f'"{url}"', json.dumps(url)))
    for fmt in ("powerdns", "route53"):
        with pytest.raises(SystemExit) as info:
            main(export(cfg, "--format", fmt))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "regions[0] (eu-central): url has" in err and "percent-encode" in err, err
        assert err.count("\n") == 1


def test_a_region_checked_at_the_global_name_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its check went wherever the records sent the checker: the region's fall unseen."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(toml({**URLS, "eu-central": "https://API.example.com/eu"}))
    for fmt in ("powerdns", "route53"):
        with pytest.raises(SystemExit) as info:
            main(export(cfg, "--format", fmt))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "region eu-central: its url's host is api.example.com, the name" in err, err
        assert err.count("\n") == 1
