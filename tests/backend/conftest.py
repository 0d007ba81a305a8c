"""A real model server process on the real tiny model, built locally once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from tests.support import Service

MODEL = "tiny"


Backend = Service


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / MODEL
    p = subprocess.run(
        geogate_cmd("backend", "make-tiny-model", str(out), "--preset", "small"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return out


def start_backend(model_dir: Path, tmp: Path, *args: str) -> Backend:
    port = free_port()
    log = tmp / f"backend-{port}.log"
    proc = spawn(geogate_cmd("backend", "--model", str(model_dir), "--port", str(port), *args), log)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout=120, proc=proc)
    return Backend(proc, port, log)


@pytest.fixture(scope="module")
def backend(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    b = start_backend(model_dir, tmp_path_factory.mktemp("backend"))
    yield b
    stop(b.proc)
