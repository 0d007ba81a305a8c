"""``geogate world``'s regional backends: ``sim-backend`` (its TTFT is set, and raised for the
overload event) or, with ``--backend model``, the real model server (``geogate backend``) on
the CPU, one per region, serving the tiny model built locally (no download) or a model
directory the user gives.

The model server has no TTFT knob, so the overload event is for the simulated backend only;
its TTFT is whatever the model takes on this machine, measured before the run (the floor)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.errors import CLIError
from gateway.cli.procs import READY_TIMEOUT_S, geogate_cmd

BACKENDS = ("sim", "model")
SIM_TOKENS_PER_S = 200.0  # the simulated stream's pace after its first token
TINY_PRESET = "tiny"  # ~160k parameters: loads in seconds and answers in milliseconds on a CPU
MODEL_READY_TIMEOUT_S = 120.0  # importing torch and one warm-up generation, on a busy CPU
MAKE_MODEL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BackendKind:
    name: str  # "sim" or "model"
    health_path: str  # what a gateway probes
    ready_timeout_s: float
    events: tuple[str, ...]  # the events it supports


KINDS = {
    "sim": BackendKind("sim", "/health", READY_TIMEOUT_S, ("overload", "drain", "fail")),
    "model": BackendKind("model", "/ready", MODEL_READY_TIMEOUT_S, ("drain", "fail")),
}


def check_events(backend: str, events: tuple[str, ...]) -> None:
    """One line for an event the backend cannot stage."""
    kind = KINDS[backend]
    bad = [e for e in events if e not in kind.events]
    if bad:
        raise CLIError(
            f"world: the {bad[0]} event needs --backend sim (it raises the simulated backend's "
            f"TTFT; the model server has no such knob); with --backend {backend} run "
            f"--events {' '.join(kind.events)}"
        )


def tiny_model(work: Path) -> Path:
    """The tiny model, built here from its config (random weights, no download)."""
    out = work / "tiny-model"
    cmd = geogate_cmd("backend", "make-tiny-model", str(out), "--preset", TINY_PRESET)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=MAKE_MODEL_TIMEOUT_S)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise CLIError(f"world: building the tiny model failed: {last}")
    return out


def backend_cmd(
    backend: str, port: int, region: str, model: str, ttft_ms: float, model_dir: Path | None
) -> list[str]:
    if backend == "sim":
        args = ["--port", str(port), "--region", region, "--model", model, "--ttft-ms",
                str(ttft_ms), "--tokens-per-s", str(SIM_TOKENS_PER_S)]  # fmt: skip
        return geogate_cmd("sim-backend", *args)
    assert model_dir is not None, "the model backend needs a model directory"
    args = ["--model", str(model_dir), "--port", str(port), "--served-model-name", model,
            "--device", "cpu"]  # fmt: skip
    return geogate_cmd("backend", *args)
