"""deploy/terraform/aws/example's global name, api.<domain>: route53.json made as dns.tf (and
README) say, `geogate dns export --format route53 --alias-regions` from the example's own
gateway config (the output dns_export_config), and read by dns.tf, which makes every region's
A links aliases to its ALB. That config has no regions[].addresses (an ALB's change): the
export refused it ("no region has addresses") and left the user to invent some."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from gateway.cli.main import main
from tests.deploy.test_aws_hosts import EXAMPLE, REGION, TF_ENV, _resources
from tests.deploy.test_terraform import _render

DOMAIN = "example.com"
MODEL = "llama-3.1-8b-instruct"


def _unquote(v: Any) -> Any:
    return v.strip('"') if isinstance(v, str) else v


def _tfvars_regions() -> dict[str, dict[str, Any]]:
    """terraform.tfvars.example's regions, in Terraform's order for a map (its keys sorted)."""
    tfvars = hcl2.loads((EXAMPLE / "terraform.tfvars.example").read_text())
    regions = {
        _unquote(k): {a: _unquote(x) for a, x in v.items()} for k, v in tfvars["regions"].items()
    }
    return dict(sorted(regions.items()))


def _expr(value: str) -> str:
    """An expression as python-hcl2 gives it ("${...}"), as Terraform reads it."""
    assert value.startswith("${") and value.endswith("}"), value
    return value[2:-1]


def _locals(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in hcl2.loads(path.read_text()).get("locals", []):
        out.update(block)
    return out


def _output_region() -> str:
    """The region whose gateway config the output dns_export_config is."""
    (output,) = [
        b['"dns_export_config"']
        for b in hcl2.loads((EXAMPLE / "outputs.tf").read_text())["output"]
        if '"dns_export_config"' in b
    ]
    m = re.fullmatch(r'local\.gateway_config\["([a-z-]+)"\]', _expr(output["value"]))
    assert m, output["value"]
    return m.group(1)


def _dns_export_config() -> str:
    """The output dns_export_config, rendered as tests/deploy render gateway.toml.tftpl."""
    regions, rid = _tfvars_regions(), _output_region()
    values = {
        "region_id": rid,
        "vpc_cidr": regions[rid]["vpc_cidr"],
        "regions": regions,
        "domain": DOMAIN,
        "model_name": MODEL,
    }
    return _render((EXAMPLE / "gateway.toml.tftpl").read_text(), values)


def _export(config: Path, out: Path, *extra: str) -> None:
    """The command dns.tf's comment gives (README, Deploying on AWS)."""
    comment = (EXAMPLE / "dns.tf").read_text()
    assert "terraform output -raw dns_export_config > dns-export.toml" in comment
    assert "geogate dns export --config dns-export.toml --format route53 --alias-regions" in comment
    zone = ["--zone", DOMAIN, "--name", "api", "--out", str(out)]
    main(["dns", "export", "--config", str(config), "--format", "route53", *extra, *zone])


def _albs() -> set[str]:
    return {_unquote(k) for k in _locals(EXAMPLE / "dns.tf")["albs"]}


@pytest.fixture
def route53(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    config = tmp_path / "dns-export.toml"
    config.write_text(_dns_export_config())
    _export(config, tmp_path / "route53.json", "--alias-regions")
    assert "(3 as load balancer aliases)" in capsys.readouterr().err
    doc: dict[str, Any] = json.loads((tmp_path / "route53.json").read_text())
    return doc


def test_without_alias_regions_the_examples_config_is_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "dns-export.toml"
    config.write_text(_dns_export_config())
    with pytest.raises(SystemExit):
        _export(config, tmp_path / "route53.json")
    err = capsys.readouterr().err
    assert "no region has addresses" in err and "--format route53 --alias-regions" in err
    assert err.count("\n") == 1


def _follow(doc: dict[str, Any], name: str) -> list[str]:
    """The regions of the A chain starting at ``name``, each link checked as dns.tf reads it."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in doc["record_sets"]:
        by_name.setdefault(s["Name"], []).append(s)
    out = []
    while True:
        links = by_name[name]
        (primary,) = [s for s in links if s.get("Failover", "PRIMARY") == "PRIMARY"]
        out.append(primary["GeogateRegion"])
        secondary = [s for s in links if s.get("Failover") == "SECONDARY"]
        if not secondary:
            return out
        name = secondary[0]["AliasTarget"]["DNSName"]


def test_every_region_gets_a_link_dns_tf_makes_an_alias_to_its_alb(
    route53: dict[str, Any],
) -> None:
    regions, albs = set(_tfvars_regions()), _albs()
    assert regions == albs
    sets = route53["record_sets"]
    links = [s for s in sets if "GeogateRegion" in s]
    assert {s["GeogateRegion"] for s in links} == regions
    # A only (the ALBs are IPv4 only), and nothing to publish but the alias dns.tf makes.
    assert {s["Type"] for s in sets} == {"A"}
    for s in links:
        assert "TTL" not in s and "ResourceRecords" not in s and "AliasTarget" not in s, s
    # Every place's chain holds every region, nearest first.
    geo = {
        s["GeoLocation"].get("ContinentCode") or s["GeoLocation"]["CountryCode"]: s
        for s in sets
        if s["Name"] == route53["name"]
    }
    for place, first in (("EU", "eu-central"), ("NA", "us-east"), ("AS", "ap-southeast")):
        chain = _follow(route53, geo[place]["AliasTarget"]["DNSName"])
        assert chain[0] == first and sorted(chain) == sorted(regions), place
    assert "alias to that region's load balancer" in route53["comment"]


def test_the_json_holds_what_dns_tf_expects_of_it(route53: dict[str, Any]) -> None:
    """dns.tf's reading, record by record: the for_each key is unique; a record has addresses
    (with a TTL), an alias in the zone, or is an ALB's A link (its precondition); every
    HealthCheck names a check, each check is on the region's own name, <id>.api.<domain>
    (aws_route53_record.regional), on /readyz, with the fields dns.tf reads."""
    albs = _albs()
    assert (route53["zone"], route53["name"]) == (f"{DOMAIN}.", f"api.{DOMAIN}.")
    sets = route53["record_sets"]
    keys = [f"{s['Name']} {s['Type']} {s.get('SetIdentifier', '')}" for s in sets]
    assert len(keys) == len(set(keys))
    names = {(s["Name"], s["Type"]) for s in sets}
    for s in sets:
        alb = s["Type"] == "A" and s.get("GeogateRegion") in albs
        assert ("ResourceRecords" in s and "TTL" in s) or "AliasTarget" in s or alb, s
        if "AliasTarget" in s:
            assert (s["AliasTarget"]["DNSName"], s["Type"]) in names, s
            assert s["AliasTarget"]["EvaluateTargetHealth"] is True
        if "HealthCheck" in s:
            assert s["HealthCheck"] in route53["health_checks"]
    regional = _resources(EXAMPLE)[("aws_route53_record", "regional")]
    assert _unquote(regional["name"]) == "${each.key}.api.${var.domain}"
    for rid, check in route53["health_checks"].items():
        assert rid in albs
        assert check["FullyQualifiedDomainName"] == f"{rid}.api.{DOMAIN}"
        assert (check["Type"], check["Port"], check["ResourcePath"]) == ("HTTPS", 443, "/readyz")
        assert {"RequestInterval", "FailureThreshold"} <= set(check)


def test_the_albs_are_ipv4_only_so_the_links_are_a_only() -> None:
    """dns.tf aliases A links only, and the export writes an alias region's links as A only:
    both hold while the ALB's ip_address_type is ipv4 (its default). A dualstack ALB would
    want AAAA alias links too."""
    alb = _resources(REGION)[("aws_lb", "gateway")]
    assert _unquote(alb.get("ip_address_type", "ipv4")) == "ipv4"


# --- Terraform's own reading, where terraform is installed -------------------------------


def _variable_block(name: str) -> str:
    text = (EXAMPLE / "variables.tf").read_text()
    m = re.search(rf'^variable "{name}" {{\n.*?^}}\n', text, re.S | re.M)
    assert m, name
    return m.group(0)


def _toy(tmp: Path, route53: dict[str, Any] | None) -> Path:
    """A root module of the example's own expressions, no resource (so no provider): the
    gateway configs (main.tf), dns.tf's locals with a stand-in for each ALB, geodns_file."""
    tmp.mkdir()
    shutil.copy(EXAMPLE / "gateway.toml.tftpl", tmp / "gateway.toml.tftpl")
    if route53 is not None:
        (tmp / "route53.json").write_text(json.dumps(route53))
    dns = _locals(EXAMPLE / "dns.tf")
    albs = ", ".join(
        f'"{r}" = {{ dns_name = "{r}-alb.elb.amazonaws.com", zone_id = "ZALB" }}' for r in _albs()
    )
    (tmp / "main.tf").write_text(
        'variable "regions" { type = any }\nvariable "domain" { type = string }\n'
        'variable "model_name" { type = string }\n'
        + _variable_block("geodns_file")
        + "locals {\n"
        + f"  gateway_config = {_expr(_locals(EXAMPLE / 'main.tf')['gateway_config'])}\n"
        + f"  albs = {{ {albs} }}\n"
        + f"  geodns = {_expr(dns['geodns'])}\n}}\n"
    )
    values = {"regions": _tfvars_regions(), "domain": DOMAIN, "model_name": MODEL}
    (tmp / "terraform.tfvars.json").write_text(json.dumps(values))
    return tmp


def _terraform(cwd: Path, *command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("terraform is not installed: the expressions are read above without it")
    return subprocess.run(
        [terraform, *command],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **TF_ENV},
    )


def _console(cwd: Path, expr: str, *args: str) -> Any:
    p = _terraform(cwd, "console", *args, stdin=f"jsonencode({expr})\n")
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(json.loads(p.stdout))


def _each(expr: str) -> str:
    return re.sub(r"\beach\.(value|key)\b", r"each_\1", _expr(expr))


def test_terraform_renders_the_output_and_reads_the_export_as_the_tests_do(
    tmp_path: Path, route53: dict[str, Any]
) -> None:
    toy = _toy(tmp_path / "toy", route53)
    output = hcl2.loads((EXAMPLE / "outputs.tf").read_text())
    (value,) = [
        b['"dns_export_config"']["value"] for b in output["output"] if '"dns_export_config"' in b
    ]
    assert _console(toy, _expr(value)) == _dns_export_config()
    record = _resources(EXAMPLE)[("aws_route53_record", "geodns")]
    aliases = [d['"alias"']["for_each"] for d in record["dynamic"] if '"alias"' in d]
    (precondition,) = record["lifecycle"][0]["precondition"]
    fields = {
        "ttl": _each(record["ttl"]),
        "records": _each(record["records"]),
        "zone_aliases": f"[for a in {_each(aliases[0])} : a.DNSName]",
        "alb_aliases": f"[for a in {_each(aliases[1])} : a.dns_name]",
        "ok": _each(precondition["condition"]),
    }
    body = ", ".join(f"{k} = {v}" for k, v in fields.items())
    each = _expr(record["for_each"])
    got = _console(toy, f"{{for each_key, each_value in {each} : each_key => {{ {body} }}}}")
    assert len(got) == len(route53["record_sets"])
    for key, r in got.items():
        assert r["ok"], key
        assert len(r["zone_aliases"]) + len(r["alb_aliases"]) + (r["records"] is not None) == 1
        assert (r["ttl"] is None) == (r["records"] is None), key
    alb = {k: r["alb_aliases"] for k, r in got.items() if r["alb_aliases"]}
    assert {a for (a,) in alb.values()} == {f"{r}-alb.elb.amazonaws.com" for r in _albs()}
    # A link of a region this example has no ALB for fails the plan, not the apply.
    stray = {"Name": "_o9-1-v4.api.example.com.", "Type": "A", "GeogateRegion": "eu-west"}
    doc = {**route53, "record_sets": [*route53["record_sets"], stray]}
    toy = _toy(tmp_path / "stray", doc)
    got = _console(toy, f"{{for each_key, each_value in {each} : each_key => {fields['ok']}}}")
    assert [k for k, ok in got.items() if not ok] == ["_o9-1-v4.api.example.com. A "]


def test_a_first_apply_goes_without_the_global_name(tmp_path: Path) -> None:
    """geodns_file = "": no route53.json yet, no records, and the output to export from.
    Without it, a missing file is refused with the way out, before any plan."""
    toy = _toy(tmp_path / "toy", None)
    assert _console(toy, "local.geodns", "-var", "geodns_file=") == {
        "health_checks": {},
        "record_sets": [],
    }
    init = _terraform(toy, "init", "-input=false", "-no-color")
    assert init.returncode == 0, init.stdout + init.stderr
    plan = _terraform(toy, "plan", "-input=false", "-no-color")
    assert plan.returncode != 0
    message = " ".join(plan.stderr.split())
    assert (
        "geodns_file: no such file" in message and "-var geodns_file= for a first apply" in message
    )
    plan = _terraform(toy, "plan", "-input=false", "-no-color", "-var", "geodns_file=")
    assert plan.returncode == 0, plan.stdout + plan.stderr
