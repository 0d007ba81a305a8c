"""Every metric name the alert rules and the Grafana dashboard use is one that a real gateway
and a real model server (`geogate backend` on the tiny model) export, so neither can rot.

The model server's GPU gauges exist only where NVML finds a GPU: they are read from the same
BackendMetrics class with a stand-in NVML module (the names, not the values, are checked)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from backend.metrics import BackendMetrics
from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from tests.deploy.conftest import DEPLOY
from tests.support import CHAT_BODY, Service, UpstreamSpec, gateway_toml, start_gateway

# Our namespaces: the gateway's geogate_*, the model server's vLLM names, recorded geogate:*.
NAME = re.compile(r"(?<![\w:])((?:geogate|vllm)[_:][A-Za-z0-9_:]*[A-Za-z0-9_])")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# Series Prometheus makes itself (a target's `up`), and constant vectors: an expression may use
# only these (GeogateTargetDown, GeogateRegionAbsent), and nothing needs to export them.
PROMETHEUS_OWN = re.compile(r"(?<![\w:])(?:up\{|vector\()")


def exported(text: str) -> set[str]:
    """Sample names of an exposition, including families that have no sample yet (a labelled
    metric nobody has touched still has its # TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            if kind == "counter":  # "# TYPE x_total counter" (prometheus_client >= 0.20)
                family = family.removesuffix("_total")
            names |= {family + s for s in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used() -> dict[str, set[str]]:
    """Metric name -> where it is used; recorded names (alerts.yml `record:`) left out."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs: list[tuple[str, str]] = []
    recorded = set()
    for group in rules["groups"]:
        for r in group["rules"]:
            exprs.append((f"alerts.yml {r.get('alert') or r.get('record')}", r["expr"]))
            recorded |= {r["record"]} if "record" in r else set()
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "geogate.json").read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            exprs.append((f"dashboard '{panel['title']}'", t["expr"]))
    out: dict[str, set[str]] = {}
    for where, expr in exprs:
        names = set(NAME.findall(expr))
        assert names or PROMETHEUS_OWN.search(expr), f"{where}: {expr!r} uses no metric of ours"
        for n in names - recorded:
            out.setdefault(n, set()).add(where)
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("metric-names")
    model = tmp / "tiny"
    p = subprocess.run(
        geogate_cmd("backend", "make-tiny-model", str(model), "--preset", "small"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    port = free_port()
    log = tmp / "backend.log"
    proc = spawn(geogate_cmd("backend", "--model", str(model), "--port", str(port)), log)
    backend = Service(proc, port, log)
    try:
        wait_http(f"{backend.url}/ready", timeout=120, proc=proc)
        up = UpstreamSpec("fra-gpu-1", "eu-central", backend.url, ["tiny"])
        # Two workers: /metrics is then merged, with the workers' own gauges, which an alert
        # reads (GeogateWorkerMissingFromScrape).
        two = "[server]\nworkers = 2"
        gw = start_gateway(tmp, lambda p: gateway_toml(p, [up]).replace("[server]", two))
        try:
            yield gw, backend
        finally:
            gw.stop()
    finally:
        stop(proc)


def _get(url: str, body: dict[str, Any] | None = None) -> str:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
        return str(r.read().decode())


def _gpu_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: object(),
        nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1 << 30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = BackendMetrics("tiny")
    m.enable_gpu()
    return exported(m.render().decode())


def test_every_metric_used_is_exported(
    fleet: tuple[Service, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, backend = fleet
    # One request through both, so every histogram has samples too.
    body = {**CHAT_BODY, "model": "tiny", "max_tokens": 4}
    _get(f"{gw.url}/v1/chat/completions", body)
    names = exported(_get(f"{gw.ops_url}/metrics"))
    names |= exported(_get(f"{backend.url}/metrics"))
    names |= _gpu_names(monkeypatch)
    uses = used()
    assert len(uses) >= 20, sorted(uses)
    missing = {n: sorted(w) for n, w in uses.items() if n not in names}
    assert not missing, f"metrics used but not exported: {missing}"


def test_an_unknown_name_is_reported() -> None:
    """The check can fail: a name nobody exports is found in an expression."""
    assert NAME.findall("sum(rate(geogate_requests_totl[5m])) / vllm:num_requests_waitin") == [
        "geogate_requests_totl",
        "vllm:num_requests_waitin",
    ]
    assert "geogate_requests_totl" not in exported("# TYPE geogate_requests counter\n")


def test_the_gpu_gauges_need_nvml() -> None:
    """Without NVML (this machine) the model server has no GPU families at all: that is why
    the test above reads them through the stand-in."""
    names = exported(BackendMetrics("tiny").render().decode())
    assert "geogate_backend_gpu_utilization_perc" not in names
    assert "vllm:num_requests_waiting" in names
