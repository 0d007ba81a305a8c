"""Prometheus metrics with vLLM's names where the meaning matches, plus NVML GPU figures.

``vllm:kv_cache_usage_perc`` is left out on purpose: this engine grows its KV cache per
request instead of carving a fixed pool, so there is no meaningful "share used".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from backend.engine import EngineObserver, Sequence

log = logging.getLogger("geogate.backend")
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class BackendMetrics(EngineObserver):
    def __init__(self, model_name: str) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.name = model_name
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting", labels, registry=r
        ).labels(model_name)
        self.running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch", labels, registry=r
        ).labels(model_name)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        ).labels(model_name)
        # vLLM's name; observed once per request (its mean gap between tokens after the
        # first), so percentiles are over requests: what one client's stream felt like.
        self.itl = Histogram(
            "vllm:time_per_output_token_seconds",
            "Inter-token latency (per request, mean after the first token)",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.prompt = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed", labels, registry=r
        ).labels(model_name)
        self.generated = Counter(
            "vllm:generation_tokens", "Tokens generated", labels, registry=r
        ).labels(model_name)
        self._nvml: Any = None
        self._nvml_failed = False  # said once that a read failed
        self._gpu_util: Any = None
        self._gpu_mem: Any = None

    def enable_gpu(self) -> None:
        """GPU utilization and memory from NVML, when a GPU and pynvml are there."""
        try:
            import pynvml  # from nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = _nvml_handle(pynvml)
        except Exception as exc:  # no driver, no library: the metrics are simply absent
            log.warning("GPU metrics disabled: NVML unavailable (%s)", exc)
            return
        self._gpu_util = Gauge(
            "geogate_backend_gpu_utilization_perc",
            "GPU utilization (0-100) from NVML",
            registry=self.registry,
        )
        self._gpu_mem = Gauge(
            "geogate_backend_gpu_memory_used_bytes",
            "GPU memory in use from NVML",
            registry=self.registry,
        )

    def _read_gpu(self) -> None:
        """NVML's two numbers; a read it refuses (a MIG instance has no utilization) leaves
        them unknown (NaN), said once, and never fails the scrape: the waiting and running
        gauges a gateway routes on come with the same scrape."""
        import pynvml

        try:
            self._gpu_util.set(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            self._gpu_mem.set(pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)
        except pynvml.NVMLError as exc:
            self._gpu_util.set(math.nan)
            self._gpu_mem.set(math.nan)
            if not self._nvml_failed:
                log.warning("GPU metrics unknown: NVML refused a read (%s)", exc)
            self._nvml_failed = True

    def render(self, names: Collection[str] = ()) -> bytes:
        """The exposition text; with ``names``, only those samples (a scrape's ``name[]``
        query, as prometheus_client's own /metrics handler honors it)."""
        if self._nvml is not None:
            self._read_gpu()
        if names:
            return generate_latest(self.registry.restricted_registry(names))
        return generate_latest(self.registry)

    # EngineObserver (called from the engine thread; prometheus_client is thread-safe)
    def queue(self, waiting: int, running: int) -> None:
        self.waiting.set(waiting)
        self.running.set(running)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, seq: Sequence, seconds: float, reason: str) -> None:
        if reason == "cancelled":  # the client's choice to leave, not how long serving took
            return
        self.e2e.observe(seconds)
        n = len(seq.out_ids)
        if seq.t_first is not None and n > 1:
            self.itl.observe((seq.t_submit + seconds - seq.t_first) / (n - 1))

    def tokens(self, prompt: int, generated: int) -> None:
        if prompt:
            self.prompt.inc(prompt)
        if generated:
            self.generated.inc(generated)


def _nvml_handle(pynvml: Any) -> Any:
    """The NVML handle of the GPU this process computes on (torch's cuda:0).

    NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES, so on a host running one server per GPU
    (CUDA_VISIBLE_DEVICES=3) NVML's index 0 is another server's GPU. The UUID is the same in
    both worlds.
    """
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(0).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception as exc:  # older torch without .uuid, MIG slices: fall back to index 0
        log.warning("NVML: GPU not found by UUID (%s); reporting NVML's GPU 0", exc)
        return pynvml.nvmlDeviceGetHandleByIndex(0)
