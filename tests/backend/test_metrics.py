"""The engine's observations as /metrics shows them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backend.engine import Engine, Event, Sequence
from backend.loader import load_model
from backend.metrics import BackendMetrics
from backend.sampling import SamplingParams


def count(m: BackendMetrics, name: str) -> float:
    value = m.registry.get_sample_value(name, {"model_name": "m"})
    return value or 0.0


def test_cancelled_requests_stay_out_of_the_latency_histograms(model_dir: Path) -> None:
    loaded = load_model(model_dir)
    m = BackendMetrics("m")
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, observer=m)
    ids = loaded.tokenizer("hello")["input_ids"]
    done: list[Event] = []
    ended = threading.Event()

    def emit(ev: Event) -> None:
        if ev.kind != "token":
            done.append(ev)
            ended.set()

    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    left = Sequence(ids, params, emit)
    e.submit(left)
    e.step()
    e.step()
    left.cancelled = True  # a client that left after two tokens: its "latency" is its own
    while not ended.is_set():
        e.step()
    assert done[-1].finish_reason == "cancelled"
    assert count(m, "vllm:e2e_request_latency_seconds_count") == 0
    assert count(m, "vllm:time_per_output_token_seconds_count") == 0
    ended.clear()
    e.submit(Sequence(ids, params, emit))
    while not ended.is_set():
        e.step()
    assert done[-1].finish_reason == "length"
    assert count(m, "vllm:e2e_request_latency_seconds_count") == 1
    assert count(m, "vllm:time_per_output_token_seconds_count") == 1


def test_a_gpu_read_nvml_refuses_leaves_the_scrape_whole(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A MIG instance has no utilization to read: the refusal failed every scrape (a plain
    # 500), and with it the waiting and running gauges a gateway routes on.
    import pynvml

    def refused(_: object) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr("backend.metrics._nvml_handle", lambda _: object())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", refused)
    m = BackendMetrics("m")
    m.enable_gpu()
    m.queue(3, 2)
    for _ in range(2):
        text = m.render().decode()
        assert "geogate_backend_gpu_utilization_perc NaN" in text
        assert 'vllm:num_requests_waiting{model_name="m"} 3.0' in text
    assert [r.message for r in caplog.records].count(
        "GPU metrics unknown: NVML refused a read (Not Supported)"
    ) == 1
