"""``geogate world --backend model``: the real model server (the tiny model, built locally, on
the CPU) behind every topology, and the events it cannot stage refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import world_report as wr
from gateway.cli.errors import CLIError
from gateway.cli.world import WorldSpec
from gateway.cli.world_backends import backend_cmd, check_events
from gateway.cli.world_run import pick_sites, run_world

pytest.importorskip("torch")  # the model server's extra


def test_a_small_world_on_the_real_model_server(tmp_path: Path) -> None:
    """One site, two regions, edge -> regional gateway -> model server; a drain moves
    geogate's traffic and costs it nothing. Kept small: two model servers on two cores."""
    spec = WorldSpec(
        sites=pick_sites(["London"]),
        regions=("eu-central", "us-east"),
        requests=2,
        events=("drain",),
        event_s=1.0,
        out=tmp_path,
        progress=False,
        backend="model",
    )
    result = run_world(spec)
    print(result.md)
    (row,) = result.rows
    assert all(row.cells[t].failed == 0 and row.cells[t].p50 is not None for t in wr.TOPOLOGIES)
    meta = json.loads((tmp_path / "world.json").read_text())["meta"]
    assert meta["backend"] == "model" and meta["backend_ttft_ms"] > 0
    assert meta["backend_ttft_source"].startswith("measured")
    # the floor is the measured model TTFT plus London's nearest RTT, not the sim's 40 ms
    assert row.floor_ms == pytest.approx(meta["backend_ttft_ms"] + 20, abs=15)
    geogate = next(e for e in result.events if e.topology == "geogate")
    assert geogate.event == "drain" and geogate.failed == 0
    if geogate.affected_sites:  # London's geogate traffic was on eu-central: the drain moved it
        assert geogate.moved_after_s is not None
    else:
        # The load-aware router had already sent London to us-east: eu-central's one model
        # server was busy with the other topologies' requests at the same time (seen once
        # in a full run on this 2-core VM). The drain then must not bring any back.
        assert row.cells["geogate"].p50 is not None
    late = [
        s
        for s in result.samples
        if s.phase == "drain" and s.topology == "geogate" and s.t_s > 0.5 and s.ok
    ]
    assert late and all(s.region != "eu-central" for s in late), late  # none to the drained


def test_the_model_server_cannot_be_overloaded_on_cue() -> None:
    check_events("sim", ("overload", "drain", "fail"))
    with pytest.raises(CLIError) as err:
        check_events("model", ("overload", "fail"))
    assert str(err.value).startswith("world: the overload event needs --backend sim")
    assert "\n" not in str(err.value)


def test_bad_backend_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["world", "--backend", "model", "--events", "overload"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("geogate: world: the overload event needs --backend sim")


def test_commands_per_backend(tmp_path: Path) -> None:
    sim = backend_cmd("sim", 9001, "us-east", "m", 40.0, None)
    assert sim[2:4] == ["gateway", "sim-backend"] and "--ttft-ms" in sim
    model = backend_cmd("model", 9001, "us-east", "m", 40.0, tmp_path)
    assert model[3] == "backend" and model[model.index("--model") + 1] == str(tmp_path)
    assert model[model.index("--device") + 1] == "cpu"
