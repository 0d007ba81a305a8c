"""bench/overhead.py's targets: geogate runs the default config (access log on, a GeoIP
database that places the load's source address), geogate-lean differs in those two knobs only."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from bench import overhead_cells
from bench.overhead import TARGETS, gateway_conf, nginx_conf
from bench.peers import FLOORS, PEERS
from gateway.config import GeoIPSection, ServerSection
from gateway.config_file import load_config
from gateway.runtime import default_location
from geodb.location import LocationSource
from geodb.reader import GeoIPSource


def test_geogate_target_runs_the_default_config(tmp_path: Path) -> None:
    cfg = load_config(gateway_conf(tmp_path, 18080, 18081))
    # Nothing in [server] but the port differs from the defaults: the default engine, the
    # access log on.
    assert cfg.server.model_dump() == ServerSection(port=18080).model_dump()
    assert cfg.server.access_log is True
    assert cfg.geoip.database is not None
    want = GeoIPSection(database=cfg.geoip.database).model_dump()
    assert cfg.geoip.model_dump() == want
    # The load generators connect from 127.0.0.1: the lookup must hit a record.
    loc = GeoIPSource(cfg.geoip.database, default_location(cfg)).locate(ip_address("127.0.0.1"))
    assert (loc.source, loc.country) == (LocationSource.GEOIP, "DE")


def test_lean_target_turns_off_exactly_the_two_knobs(tmp_path: Path) -> None:
    full = load_config(gateway_conf(tmp_path, 18080, 18081, name="full"))
    lean = load_config(gateway_conf(tmp_path, 18080, 18081, lean=True, name="lean"))
    assert (lean.server.access_log, lean.geoip.database) == (False, None)
    same = {"server": {"access_log"}, "geoip": {"database"}, "ops": {"port"}}
    assert full.model_dump(exclude=same) == lean.model_dump(exclude=same)


def test_ecs_target_differs_in_the_log_format_only(tmp_path: Path) -> None:
    text = load_config(gateway_conf(tmp_path, 18080, 18081, name="text"))
    ecs = load_config(gateway_conf(tmp_path, 18080, 18081, name="ecs", ecs=True))
    assert (text.log.format, ecs.log.format) == ("text", "ecs")
    same = {"log": {"format"}, "ops": {"port"}}
    assert text.model_dump(exclude=same) == ecs.model_dump(exclude=same)


def test_the_granian_target_differs_in_the_engine_only(tmp_path: Path) -> None:
    default = load_config(gateway_conf(tmp_path, 18080, 18081, name="default"))
    granian = load_config(gateway_conf(tmp_path, 18080, 18081, "granian", name="granian"))
    assert (default.server.engine, granian.server.engine) == ("uvicorn", "granian")
    same = {"server": {"engine"}, "ops": {"port"}}
    assert default.model_dump(exclude=same) == granian.model_dump(exclude=same)


def test_nginx_peer_logs_in_batches_as_geogate_does(tmp_path: Path) -> None:
    conf = nginx_conf(tmp_path, 1, 2, 3).read_text()
    assert f"access_log {tmp_path}/nginx-access.log combined buffer=64k flush=1s;" in conf
    assert "access_log off;" in nginx_conf(tmp_path, 1, 2, 3, access_log=False).read_text()


def test_every_peer_is_a_described_target() -> None:
    # The report names each target's configuration: a peer missing there would fail the run
    # at its very end, after every cell was measured.
    assert set(PEERS) <= set(TARGETS)
    assert set(FLOORS) <= set(PEERS)
    assert all(TARGETS[p] for p in PEERS)


def test_a_missing_h2load_stops_the_cell_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through taskset a missing h2load was an exit status, not an exception: a profile read
    every request as failed and went on to summarise a run that never happened."""
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    body = tmp_path / "body.json"
    body.write_text("{}")
    with pytest.raises(SystemExit) as stop:
        overhead_cells.h2load("http://127.0.0.1:9/", body, "h1", 1, 1.0, tmp_path / "log", [])
    assert stop.value.code == (
        "bench: h2load not found; run it through scripts/dev bench, which installs it"
    )
