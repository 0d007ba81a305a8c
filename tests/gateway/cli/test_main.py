"""The geogate command as a user runs it: real processes, output read back."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

from bench.proc_cpu import process_tree
from gateway.cli.procs import free_port, geogate_cmd
from tests.support import UpstreamSpec, alive, gateway_toml


def geogate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(geogate_cmd(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    csv = tmp_path / "nets.csv"
    csv.write_text(
        "network,country,continent,latitude,longitude,city\n"
        "198.51.100.0/24,SG,AS,1.35,103.82,Singapore\n"
        "192.0.2.0/24,GB,EU,51.51,-0.13,London\n"
    )
    out = tmp_path / "city.mmdb"
    p = geogate("geodb", "build", str(csv), str(out))
    assert p.returncode == 0, p.stderr
    assert "2 network(s)" in p.stdout
    return out


def test_lookup_shows_location_and_route(tmp_path: Path, city_db: Path) -> None:
    ups = [
        UpstreamSpec("eu-1", "eu-central", "http://127.0.0.1:1", ["m"]),
        UpstreamSpec("ap-1", "ap-southeast", "http://127.0.0.1:2", ["m"]),
    ]
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(8080, ups, extra=f'[geoip]\ndatabase = "{city_db}"\n'))
    p = geogate("geodb", "lookup", "198.51.100.7", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "Singapore, SG" in p.stdout and "source=geoip" in p.stdout
    assert "region ap-southeast (upstream ap-1)" in p.stdout
    p = geogate("geodb", "lookup", "192.0.2.1", "--config", str(cfg), "--json")
    doc = json.loads(p.stdout)
    assert doc["location"]["city"] == "London"
    assert doc["route"]["region"] == "eu-central"
    p = geogate("geodb", "lookup", "203.0.113.1", "--db", str(city_db))
    assert "source=default" in p.stdout and "routes to" not in p.stdout
    # An IPv4-mapped address is the IPv4 address, as a client's is.
    p = geogate("geodb", "lookup", "::ffff:198.51.100.7", "--db", str(city_db), "--json")
    doc = json.loads(p.stdout)
    assert doc["ip"] == "198.51.100.7" and doc["location"]["city"] == "Singapore"


def lookup_into(stdout: int | IO[str], city_db: Path) -> subprocess.CompletedProcess[str]:
    """``geogate geodb lookup`` with its output into ``stdout``."""
    return subprocess.run(
        geogate_cmd("geodb", "lookup", "192.0.2.1", "--db", str(city_db)),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def test_output_to_a_full_device_is_one_line(city_db: Path) -> None:
    """``geogate ctl audit > /dev/full`` (a full disk) ended in a traceback."""
    with open("/dev/full", "w") as full:
        p = lookup_into(full, city_db)
    assert (p.returncode, p.stderr) == (
        1,
        "geogate: cannot write the output: no space left on device\n",
    )


def test_a_reader_that_closed_its_end_ends_the_output_quietly(city_db: Path) -> None:
    """``geogate ... | head -1``: once the reader is gone, a write fails with EPIPE; that ends
    the output, as SIGPIPE would (128 + 13), with no traceback. Here the reader is gone before
    the first write, which makes it certain (``head`` races the writer)."""
    read, write = os.pipe()
    os.close(read)
    try:
        p = lookup_into(write, city_db)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr) == (141, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["geodb", "lookup", "not-an-ip", "--db", "x.mmdb"], "is not an IP address"),
        (["geodb", "lookup", "fe80::1%eth0", "--db", "x.mmdb"], "is not an IP address"),
        (["geodb", "lookup", "1.2.3.4", "--db", "/nonexistent.mmdb"], "does not exist"),
        (["geodb", "lookup", "1.2.3.4"], "give --db PATH or --config FILE"),
        (["geodb", "build", "/nonexistent.csv", "/tmp/o.mmdb"], "cannot read /nonexistent.csv"),
        (["gateway", "--config", "/nonexistent.toml"], "cannot read /nonexistent.toml"),
        (["sim-backend", "--port", "1", "--error-rate", "2"], "--error-rate"),
    ],
)
def test_errors_are_one_readable_line(args: list[str], message: str) -> None:
    p = geogate(*args)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.replace("[gateway]", '[gateway]\ntrusted_proxies = ["10.0.0.0/33"]'),
            "gateway.trusted_proxies[0]: not an address or network",
        ),
        (
            lambda t: t.replace("[server]", '[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"'),
            "server.tls_cert: cannot read",
        ),
        (
            # 192.0.2.1 (TEST-NET-1) is on no machine: binding to it fails, nothing is sent.
            lambda t: t.replace('host = "127.0.0.1"', 'host = "192.0.2.1"'),
            "192.0.2.1",
        ),
        (
            lambda t: (
                t + '[[upstreams]]\nid = "u"\nregion = "eu-central"\n'
                'url = "http://127.0.0.1:8000/v1"\nmodels = ["m"]\n'
            ),
            "upstreams[0].url: ends in /v1",
        ),
        (
            lambda t: t + '[redis]\nurl = "redis:/:hunter2@127.0.0.1:6379"\n',
            "redis.url: redis:/:****@127.0.0.1:6379: bad host:port",
        ),
        (lambda t: t + '[redis]\nurl = "rediss://:hunter2@127.0.0.1:x"\n', ":****@127.0.0.1:x"),
    ],
)
def test_a_config_the_gateway_cannot_run_stops_it_in_one_line(
    tmp_path: Path, change: Callable[[str], str], message: str
) -> None:
    cfg = tmp_path / "gw.toml"
    text = gateway_toml(free_port(), []).replace("[server]", '[server]\nhost = "127.0.0.1"')
    cfg.write_text(change(text))
    p = geogate("gateway", "--config", str(cfg))
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "hunter2" not in p.stderr


def test_ctl_never_prints_the_redis_password() -> None:
    p = geogate("ctl", "--redis", "redis://:hunter2@127.0.0.1:1", "show")
    assert p.returncode == 2 and "cannot reach Redis at redis://:****@127.0.0.1:1" in p.stderr
    assert "hunter2" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = geogate("ctl", "--redis", "http://:hunter2@127.0.0.1:1", "show")
    assert p.returncode == 2 and "--redis http://:****@127.0.0.1:1: use redis://" in p.stderr
    assert "hunter2" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_corrupt_geoip_file_stops_the_gateway_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"garbage" * 100)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(8080, [], extra=f'[geoip]\ndatabase = "{bad}"\n'))
    p = geogate("gateway", "--config", str(cfg))
    assert p.returncode == 2
    assert f"geoip.database: GeoIP database {bad} is corrupt" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_check_says_what_a_config_describes_without_taking_its_ports(
    tmp_path: Path, city_db: Path
) -> None:
    # The gateway being reloaded holds its port: --check must not need it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ups = [
            UpstreamSpec("a", "eu-central", "http://127.0.0.1:1", ["m", "n"]),
            UpstreamSpec("b", "us-east", "http://127.0.0.1:2", ["m"]),
        ]
        cfg = tmp_path / "gw.toml"
        geo = f'[geoip]\ndatabase = "{city_db}"\n'
        cfg.write_text(
            gateway_toml(port, ups, extra=geo).replace("[server]", "[server]\nworkers = 2")
        )
        p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (
        f"{cfg}: ok: gateway in eu-central, 2 upstream(s) in 2 of 4 region(s), 2 model(s); "
        f"listens on 127.0.0.1:{port} (uvicorn, 2 worker(s)), ops on 127.0.0.1:9180; "
        "state in memory"
    )
    # What a start would stop on, --check stops on, in the same one line.
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"garbage" * 100)
    cfg.write_text(gateway_toml(port, ups, extra=f'[geoip]\ndatabase = "{bad}"\n'))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 2 and p.stdout == ""
    assert f"geoip.database: GeoIP database {bad} is corrupt" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    cfg.write_text(gateway_toml(port, ups).replace("[server]", "[server]\nworkers = 0"))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 2 and "server.workers" in p.stderr and "Traceback" not in p.stderr
    # A listen address no start could bind: refused as the start refuses it.
    cfg.write_text(gateway_toml(port, ups).replace("[server]", '[server]\nhost = "192.0.2.1"'))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert (
        "cannot listen on 192.0.2.1" in p.stderr and "no such address on this machine" in p.stderr
    )


def _demo_until(proc: subprocess.Popen[str], marker: str, count: int, timeout: float) -> str:
    """The demo's output up to the ``count``-th line holding ``marker`` (read by a thread:
    a kept-running demo never closes its output)."""
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")))
    reader.daemon = True
    reader.start()
    deadline = time.monotonic() + timeout
    while sum(marker in line for line in list(lines)) < count:
        assert proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    return "".join(lines)


def test_demo_runs_the_whole_story_and_leaves_the_dashboard_up(tmp_path: Path) -> None:
    # One run for both, as the story takes most of the time: --keep-running prints the
    # dashboard and its login before the story (to watch it live) and after it.
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            geogate_cmd("demo", "--keep-running"), stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            out = _demo_until(proc, "made for this run", 2, timeout=120)
            login = r"Dashboard: (\S+)\n  log in with the admin token (\S+)"
            url, token = re.findall(login, out)[-1]
            with httpx.Client(base_url=url.removesuffix("/dashboard")) as c:
                assert "geogate dashboard" in c.get("/dashboard").text
                r = c.post("/dashboard/login", json={"token": token})
                assert r.json()["operator"] == "demo", r.text
                regions = [x["id"] for x in c.get("/dashboard/api/state").json()["regions"]]
                assert regions == ["eu-central", "ap-southeast", "us-east"]
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops what it started
            proc.wait(30)
    first = out.split("2. Killing")[0]
    for city, region in [
        ("London", "eu-central"),
        ("Singapore", "ap-southeast"),
        ("New York", "us-east"),
        ("Sydney", "ap-southeast"),
        ("São Paulo", "us-east"),
    ]:
        assert re.search(rf"{city} \(127\.0\.0\.\d\)\s+{region}\s", first), (city, first)
    assert "failed requests: 0" in out
    after = out.split("After the failover:")[1].split("3. Residency")[0]
    assert re.search(r"New York \(127\.0\.0\.4\)\s+eu-central\s", after)
    last = out.split("With only ap-southeast left:")[1]
    assert re.search(r"London \(127\.0\.0\.2\)\s+HTTP 503", last)
    assert "residency rule eu-stays-in-eu" in last
    assert re.search(r"New York \(127\.0\.0\.4\)\s+ap-southeast", last)


def test_geodb_build_output_errors_are_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "ok.csv"
    csv.write_text("10.0.0.0/8,DE,EU,52.52,13.40\n")
    p = geogate("geodb", "build", str(csv), "/nonexistent/out.mmdb")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr == "geogate: cannot write /nonexistent/out.mmdb: No such file or directory\n"
    p = geogate("geodb", "build", str(csv), str(tmp_path))
    assert p.stderr == f"geogate: cannot write {tmp_path}: Is a directory\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ok.csv"]  # no .tmp left behind


def test_demo_port_out_of_range_is_refused_with_the_arguments() -> None:
    p = geogate("demo", "--port", "70000")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "argument --port: must be from 0 to 65535, got 70000" in p.stderr


def test_a_demo_that_cannot_start_its_gateway_says_why_in_one_line() -> None:
    """The gateway's own one-line error (its port is taken) from its log, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = geogate("demo", "--port", str(port))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert re.match(
        rf"geogate: process for http://127.0.0.1:{port}/readyz exited with status 2; "
        rf"see \S+/gateway.log \(last line: geogate: cannot listen on 127.0.0.1:{port}",
        p.stderr,
    ), p.stderr


def test_a_demo_whose_gateway_stops_answering_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import aiohttp

    from gateway.cli import demo
    from gateway.cli.main import main

    async def lost(*_: object) -> None:
        raise aiohttp.ClientConnectionError("Server disconnected")

    monkeypatch.setattr(demo, "_scenario", lost)  # the gateway gone in the middle of the story
    with pytest.raises(SystemExit) as exit_:
        main(["demo"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("geogate: demo: the gateway stopped answering (Server disconnected)")
    assert _demo_folder(out).is_dir()  # kept: its logs say what went wrong


def _demo_folder(out: str) -> Path:
    found = re.search(r"logs in (\S+) \(removed if the demo ends well\)", out)
    assert found is not None, out
    return Path(found[1])


def test_a_demo_that_ends_well_leaves_no_folder_behind(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import demo
    from gateway.cli.main import main

    async def told(*_: object) -> None:
        print("the story")  # the story itself: test_demo_runs_the_whole_story_...

    monkeypatch.setattr(demo, "_scenario", told)
    main(["demo"])
    out = capsys.readouterr().out
    assert "demo finished in" in out
    assert not _demo_folder(out).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_demo_stopped_by_sigterm_or_sighup_stops_everything_it_started(
    sig: signal.Signals,
) -> None:
    """kill, or a terminal closed: the demo stops its children as Ctrl-C does (they are in
    sessions of their own, so nothing else would), and exits as the signal's."""
    proc = subprocess.Popen(
        geogate_cmd("demo", "--keep-running"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: under nohup (a suite run so) SIGHUP comes ignored, and the demo
        # keeps a signal ignored on purpose (test_procs).
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL),
    )
    children: dict[int, bytes] = {}
    try:
        _demo_until(proc, "made for this run", 1, timeout=120)  # gateway and backends serve
        children = {p: _cmdline(p) for p in process_tree(proc.pid)[1:]}  # below the demo
        assert len(children) >= 4, children  # 3 backends, a gateway (and its workers)
        proc.send_signal(sig)
        assert proc.wait(30) == 128 + sig
        deadline = time.monotonic() + 15
        while (left := [p for p in children if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], left
    finally:
        proc.kill()
        proc.wait()
        for pid, cmdline in children.items():  # whatever a failed run left behind
            if alive(pid) and _cmdline(pid) == cmdline:  # not another process by now
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["nosuch"], "geogate: error: argument COMMAND: invalid choice: 'nosuch'"),
        (["gateway"], "geogate gateway: error: the following arguments are required: --config"),
        (
            ["ctl", "--gateway", "http://127.0.0.1:1", "weight", "eu-1", "abc"],
            "geogate ctl weight: error: argument weight: invalid float value: 'abc'",
        ),
        (["dns", "export", "--ttl", "abc"], "geogate dns export: error: argument --ttl"),
    ],
)
def test_argument_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    """argparse's own way printed its usage block (five lines for dns export) first."""
    from gateway.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err
    assert err.rstrip().endswith("--help)")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["w" * 100_000], "geogate: error: argument COMMAND: invalid choice: '" + "w" * 99 + "…'"),
        (
            ["demo", "--port", "9" * 4000],
            "geogate demo: error: argument --port: must be from 0 to 65535, got " + "9" * 100 + "…",
        ),
        (
            ["ctl", "--redis", "redis://127.0.0.1:1", "drain", "x", "--who", "w " * 50_000],
            "geogate: --who: operator name '" + ("w " * 50)[:99] + "…': use 1-64 letters",
        ),
    ],
)
def test_overlong_values_are_cut_in_their_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    """Echoed whole, they made a line of 100,000 characters (HostGuard cuts a Host the same)."""
    from gateway.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(line), err[:300]
    assert len(err) < 1000, err[:300]


def test_a_rule_shadowed_by_an_earlier_one_is_warned_of_at_start(tmp_path: Path) -> None:
    rules = (
        '[[residency]]\nname = "eu-only"\ncontinents = ["EU"]\nregions = ["eu-central"]\n\n'
        '[[residency]]\nname = "gb-in-us"\ncountries = ["GB"]\nregions = ["us-east"]\n'
    )
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(free_port(), [], extra=rules))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 0, p.stderr
    assert "GB in residency rule 'gb-in-us' is matched first by 'eu-only'" in p.stderr


@pytest.mark.parametrize(
    ("more", "said"),
    [
        ("", "every client is located at geoip.default (no country), so no rule applies to any"),
        (
            '[geoip.default]\ncountry = "DE"\n',
            "every client is located at geoip.default (country DE), so the rules matching DE "
            "apply to all of them",
        ),
        (
            f'[edge]\nkeys = {{k1 = "{"k" * 32}"}}\naudiences = ["api.example.com"]\n',
            "clients without a signed edge header are located at geoip.default (no country)",
        ),
    ],
)
def test_residency_rules_without_geoip_are_warned_of(tmp_path: Path, more: str, said: str) -> None:
    """Without a database every client not located by the edge is at the default location:
    a rule applies to all of them or to none. Silent before."""
    rule = '[[residency]]\nname = "eu-only"\ncontinents = ["EU"]\nregions = ["eu-central"]\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(free_port(), [], extra=rule + more))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 0, p.stderr
    assert "WARNING geogate: residency rules without geoip.database: " + said in p.stderr
    cfg.write_text(gateway_toml(free_port(), [], extra=more))  # no rule: nothing to say
    assert "residency" not in geogate("gateway", "--config", str(cfg), "--check").stderr


def test_a_trusted_network_wider_than_any_balancer_is_warned_of(tmp_path: Path) -> None:
    # ::ffff:0:0/96 is every IPv4 address once normalised: each client could set its own.
    cfg = tmp_path / "gw.toml"
    text = gateway_toml(free_port(), [])
    trust = 'trusted_proxies = ["::ffff:0:0/96", "10.0.0.0/16", "2001:db8::/16"]\n'
    cfg.write_text(text.replace("[gateway]\n", "[gateway]\n" + trust, 1))
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 0, p.stderr
    assert "trusted_proxies includes 0.0.0.0/0 (4294967296 addresses)" in p.stderr
    assert "includes 2001::/16" in p.stderr and "10.0.0.0/16" not in p.stderr


def test_an_ops_listener_off_loopback_without_a_token_is_warned_of_by_the_check(
    tmp_path: Path,
) -> None:
    """Said at start only: `--check`, where a config is looked at before it runs, was silent."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(free_port(), []) + '\n[ops]\nhost = "0.0.0.0"\n')
    p = geogate("gateway", "--config", str(cfg), "--check")
    assert p.returncode == 0, p.stderr
    assert "WARNING geogate: ops listener on 0.0.0.0 without ops.token" in p.stderr
    cfg.write_text(gateway_toml(free_port(), []) + '\n[ops]\nhost = "0.0.0.0"\nport = 0\n')
    assert "ops listener on" not in geogate("gateway", "--config", str(cfg), "--check").stderr


def test_world_and_plan_are_listed_but_imported_only_to_run_them() -> None:
    """Their parsers were built for every command: each `geogate gateway` and `geogate ctl`
    imported the emulated world's and the planner's modules (0.4 s) and used none of them."""
    probe = (
        "import sys\n"
        "from gateway.cli.main import _parser\n"
        "for command in (None, 'gateway', 'ctl', 'dns'):\n"
        "    _parser(command)\n"
        "heavy = [m for m in ('gateway.cli.world_run', 'gateway.cli.plan') if m in sys.modules]\n"
        "print(heavy)\n"
        "_parser('world').parse_args(['world', '--requests', '3'])\n"
        "print('gateway.cli.world_run' in sys.modules)\n"
    )
    done = subprocess.run(
        [*geogate_cmd()[:1], "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stdout + done.stderr
    listed = subprocess.run(
        [*geogate_cmd(), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert re.search(r"world\s+emulated world on loopback", listed), listed
    assert re.search(r"plan\s+where to put GPUs", listed), listed
    own = subprocess.run(
        [*geogate_cmd(), "world", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--regional-gateways" in own and "--published-rtt" in own, own
