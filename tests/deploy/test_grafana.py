"""deploy/grafana: the dashboard is one Grafana can provision (unique panel ids, panels on the
grid without overlap, every query on its data source variable, the provisioned Prometheus by
default) and covers what the issue asks for. Its metric names are checked against live processes in
test_metric_names.py."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY

GRAFANA = DEPLOY / "grafana"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "geogate.json").read_text())
    return data


def _datasource_variable() -> str:
    """The dashboard's data source, a variable of type datasource: compose's provisioned
    Prometheus by default, and in a Grafana of one's own (the AWS deployment's, where the
    JSON is imported) its default Prometheus, whatever its uid. A uid written into every
    panel left each panel of an imported dashboard on a data source "not found"."""
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (provisioned,) = ds["datasources"]
    (var,) = [v for v in _dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == provisioned["type"] == "prometheus"
    assert var["current"]["value"] == provisioned["uid"]
    return "${" + str(var["name"]) + "}"


def test_panels_are_well_formed_and_on_the_provisioned_data_source() -> None:
    uid = _datasource_variable()
    panels = _dashboard()["panels"]
    assert isinstance(panels, list)
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            for t in p["targets"]:
                assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]
    # No panel of another kind hides a data source of its own anywhere in the JSON.
    uids = re.findall(r'"uid": "([^"]*)"', (GRAFANA / "dashboards" / "geogate.json").read_text())
    assert set(uids) == {"geogate-fleet", uid}


def test_it_shows_what_operators_asked_for() -> None:
    exprs = " ".join(t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", []))
    for needle in (
        "geogate_requests_total",  # requests and errors by region
        "geogate_client_requests_total",  # by country
        "geogate_client_errors_total",
        "geogate_time_to_first_byte_seconds_bucket",  # TTFT percentiles
        "vllm:time_per_output_token_seconds_bucket",  # inter-token latency
        "geogate_upstream_healthy",
        "geogate_upstream_ejections_total",
        "vllm:num_requests_waiting",  # queue depth
        "geogate_backend_gpu_utilization_perc",
        "geogate_shared_state_stale_seconds",
    ):
        assert needle in exprs, needle


def test_the_provider_reads_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "geogate.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = (DEPLOY / "docker" / "compose.yaml").read_text()
    assert f"../grafana/dashboards:{path}:ro" in compose


def test_error_ratios_by_region_leave_out_the_unrouted() -> None:
    """A request refused before routing carries region="-" (gateway.http.exchange): a ratio
    by region that kept it would show "-" at 100 % for a handful of overload 503s. The alert
    rule and the panel both leave it out of the per-region ratio."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    panels = _dashboard()["panels"]
    assert isinstance(panels, list)
    exprs += [t["expr"] for p in panels for t in p.get("targets", [])]
    per_region = [
        e for e in exprs if "geogate_requests_total" in e and "by (region)" in e and " / " in e
    ]
    assert len(per_region) == 2, per_region  # GeogateErrorRatioHigh and the panel
    for e in per_region:
        numerator, denominator = e.split(" / ")
        assert 'region!="-"' in numerator and 'region!="-"' in denominator, e


def test_streams_cut_mid_answer_have_a_panel_as_their_alert_reads_them() -> None:
    """A stream cut mid-answer is a 200 in geogate_requests_total: the panel shows the share of
    streams cut, with the gateway's own total_s apart, as GeogateStreamsCutHigh reads it. Cuts
    of streams only (stream="true") over streams: whole answers cut mid-body are no streams,
    and in a region serving mostly those a few paged."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "GeogateStreamsCutHigh"
    ]
    panel = next(p for p in _dashboard()["panels"] if p["title"].startswith("Streams cut"))
    upstreams = panel["targets"][0]["expr"]
    for expr in (rule["expr"], upstreams):
        assert 'geogate_stream_aborted_total{cause=~"upstream_error|timeout",stream="true"}' in expr
        assert 'geogate_time_to_first_byte_seconds_count{stream="true"}' in expr, expr
    total_s = panel["targets"][1]["expr"]
    assert 'geogate_stream_aborted_total{cause=~"total_timeout|drain",stream="true"}' in total_s
