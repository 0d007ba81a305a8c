"""deploy/terraform/aws, the GPU hosts: what a plan would do to them, read from the .tf files
(python-hcl2). Their boot script, run, is test_aws_boot.py's.

Not exercised here (no AWS): the instance refresh itself, the ALB's timeouts, the security
groups' effect, the real `aws`/`docker` CLIs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2

from gateway import defaults as d
from tests.deploy.conftest import DEPLOY

AWS = DEPLOY / "terraform" / "aws"
REGION = AWS / "modules" / "region"
EXAMPLE = AWS / "example"
USER_DATA = REGION / "user_data.sh.tftpl"


def _resources(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource in the module's .tf files."""
    out = {}
    for p in sorted(path.glob("*.tf")):
        for block in hcl2.loads(p.read_text()).get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    out[(kind.strip('"'), name.strip('"'))] = body
    return out


# --- item: instance refresh, AMI ------------------------------------------------------------


def test_a_refresh_launches_the_new_host_before_it_ends_the_old() -> None:
    """One host per region: min 100 % keeps it until its replacement is healthy, max 200 %
    lets the replacement start beside it (min 50 / max 100 ended the only host first)."""
    asg = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    (refresh,) = asg["instance_refresh"]
    (prefs,) = refresh["preferences"]
    assert prefs["min_healthy_percentage"] == 100
    assert prefs["max_healthy_percentage"] == 200
    # AWS's rule: max - min at most 100.
    assert prefs["max_healthy_percentage"] - prefs["min_healthy_percentage"] <= 100


def test_the_ami_is_pinned_not_read_from_latest() -> None:
    """An AMI read from the DLAMI's `latest` SSM parameter at plan time changes the launch
    template, and so replaces every host, on an ordinary apply."""
    lt = _resources(REGION)[("aws_launch_template", "gpu")]
    assert lt["image_id"] == "${var.ami_id}"
    text = "\n".join(p.read_text() for p in REGION.glob("*.tf"))
    assert 'data "aws_ssm_parameter"' not in text
    # Each region's own AMI in the example (AMI ids are regional).
    example = (EXAMPLE / "main.tf").read_text()
    for rid in ("eu-central", "us-east", "ap-southeast"):
        assert f'ami_id = var.regions["{rid}"].ami_id' in re.sub(r" +", " ", example), rid


# --- item: ALB idle timeout -----------------------------------------------------------------


def test_the_alb_lets_go_of_a_connection_before_the_gateway_does() -> None:
    """An ALB idle timeout at or above the target's keep-alive reuses connections the gateway
    is closing: intermittent 502s. Above the gateway's own stream timeouts, so that its error
    event (or 504) reaches the client before the ALB cuts the connection."""
    alb = _resources(REGION)[("aws_lb", "gateway")]
    idle = alb["idle_timeout"]
    template = (EXAMPLE / "gateway.toml.tftpl").read_text()
    keepalive = float(re.search(r"^keepalive_s = (\d+)", template, re.M).group(1))  # type: ignore[union-attr]
    assert idle < keepalive  # the gateway's, as the example configures it
    # A non-streaming answer comes whole, up to timeouts.response_s after the request: the
    # ALB must not cut that silence (nor a stream's first-byte wait, nor its idle gaps).
    assert idle > max(d.IDLE_TIMEOUT_S, d.FIRST_BYTE_TIMEOUT_S, d.RESPONSE_TIMEOUT_S)


def test_the_alb_waits_for_the_longest_request_before_the_host_goes(tmp_path: Path) -> None:
    """The autoscaling group deregisters a host, waits the target group's deregistration
    delay, and only then terminates it (the gateway's SIGTERM drain comes after): a request
    still in flight when the delay ends is cut. 35 s (the drain's 30 s) cut every stream and
    non-streaming answer that ran longer; the gateway allows a request timeouts.total_s, a
    non-streaming answer timeouts.response_s after its body (server.body_timeout_s) and its
    connects."""
    from gateway.config_file import load_config
    from tests.deploy.test_aws_boot import render_example_config

    tg = _resources(REGION)[("aws_lb_target_group", "gateway")]
    delay = tg["deregistration_delay"]
    assert delay <= 3600  # the ALB's maximum
    # The example's hosts run the defaults (no [timeouts] in gateway.toml.tftpl): checked
    # against the config they load, and against the defaults themselves.
    (tmp_path / "gateway.toml").write_text(render_example_config())
    cfg = load_config(tmp_path / "gateway.toml", env={})
    t = cfg.timeouts
    assert (t.total_s, t.response_s) == (d.TOTAL_TIMEOUT_S, d.RESPONSE_TIMEOUT_S)
    answer = cfg.server.body_timeout_s + cfg.retry.max_attempts * t.connect_s + t.response_s
    assert delay >= max(t.total_s, answer)
    asg = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    assert asg["target_group_arns"] == ["${aws_lb_target_group.gateway.arn}"]


# --- item: who reaches 8000 and 9180 --------------------------------------------------------


def test_ports_8000_and_9180_only_from_prometheus() -> None:
    rules = {
        name: body
        for (kind, name), body in _resources(REGION).items()
        if kind == "aws_vpc_security_group_ingress_rule"
        and "aws_security_group.gpu.id" in str(body["security_group_id"])
    }
    sources = {}
    for name, body in rules.items():
        if name == "gpu_from_alb":
            assert body["from_port"] == body["to_port"] == 8080
            continue
        sources[name] = str(body.get("for_each")) + str(body.get("referenced_security_group_id"))
    assert set(sources) == {"gpu_metrics", "gpu_metrics_from_prometheus_sg"}
    assert "var.prometheus_cidrs" in sources["gpu_metrics"]
    assert "var.prometheus_security_group_id" in sources["gpu_metrics_from_prometheus_sg"]
    variables = (REGION / "variables.tf").read_text()
    block = variables[variables.index('variable "prometheus_cidrs"') :]
    block = block[: block.index("\n}\n")]
    assert "default" not in block  # no broad default: the operator names Prometheus
    assert ">= 24" in block  # the validation refuses anything wider than a /24
    assert '!strcontains(c, ":")' in block  # and IPv6 (the rules are cidr_ipv4)
    example = (EXAMPLE / "terraform.tfvars.example").read_text()
    (line,) = [ln for ln in example.splitlines() if ln.startswith("prometheus_cidrs")]
    assert all(int(c.split("/")[1]) >= 24 for c in re.findall(r'"([0-9./]+)"', line)), line
