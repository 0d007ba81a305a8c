"""bench/gpu.py, bench/gpu_attention.py and bench/burst_ttft.py, dry on the CPU with the tiny
model: the GPU runs are a few minutes of a lent machine, so a script that breaks here (as
gpu.py did once, when bench/profile.py, now pyspy_profile.py, shadowed the standard library's
profile module) must not be found there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def dry(script: str, out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / script), "--device", "cpu", "--out", str(out)]
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc: dict[str, Any] = json.loads((out / script.replace(".py", ".json")).read_text())
    return doc


def test_gpu_bench_runs_every_stage_on_the_cpu(tmp_path: Path) -> None:
    doc = dry("gpu.py", tmp_path, "--presets", "tiny", "--modes", "none", "--profile")
    assert doc["errors"] == [] and doc["skipped"] == []
    (row,) = doc["runs"]
    assert row["tok_s_batch1"] > 0 and row["greedy"]["batch1_equal"] is True
    assert doc["profile"]["engine_thread_ms_per_token"] > 0
    server = doc["server"]
    assert server["chat"]["finish_reason"] == "length"
    assert server["chat_stream"]["same_text_as_non_streaming"] is True
    assert "| tiny | none" in (tmp_path / "gpu.md").read_text()


def test_attention_bench_compares_both_settings_on_the_cpu(tmp_path: Path) -> None:
    doc = dry("gpu_attention.py", tmp_path, "--preset", "tiny")
    cases = doc["cases"]
    assert [c["cudnn_sdp_enabled"] for c in cases] == [True, False]
    for c in cases:
        assert c["inline_fresh_ms_per_token"] > 0 and c["thread_fresh_tok_s_batch16"] > 0
        assert "aten::scaled_dot_product_attention" in c["kernels"]
    # On the CPU (float32, no cuDNN) the setting changes nothing: the same greedy text.
    assert doc["same_greedy"] is True
    assert "| False |" in (tmp_path / "gpu_attention.md").read_text()


def test_burst_bench_compares_one_by_one_with_grouped_prefill(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "burst_ttft.py"), "--preset", "tiny"]
    p = subprocess.run(
        [*cmd, "--rounds", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads((tmp_path / "burst_ttft.json").read_text())
    assert list(doc["summary"]) == ["one by one", "grouped"]
    assert all(s["ttft_ms_max"] > 0 and s["tok_s"] > 0 for s in doc["summary"].values())
    assert "one by one over grouped" in (tmp_path / "burst_ttft.md").read_text()
