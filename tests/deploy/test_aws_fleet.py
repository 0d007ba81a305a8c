"""The example's per-host gateways in Redis: one fleet per region and config, health kept per
host, and no drain of the region's one upstream through the fleet."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.config_file import load_config
from tests.deploy.test_aws_boot import (
    _env_of,
    _gateway_run,
    _values,
    boot,
    render_example_config,
)
from tests.deploy.test_aws_hosts import EXAMPLE, REGION, _resources, _unquote


def test_each_region_is_a_fleet_of_its_own_and_each_host_keeps_its_health() -> None:
    """Every host's file lists one upstream, ``<region>-local``, its own model server. In one
    fleet for all regions the first host's file would become every host's (the fleet's routing
    config); within a region the files are alike, and the fleet's drains apply to all of its
    hosts. That upstream is another server on each host: no host may vote on another's."""
    config = tomllib.loads(render_example_config())
    assert [u["id"] for u in config["upstreams"]] == ["ap-southeast-local"]
    assert config["redis"]["deployment"] == "aws-ap-southeast"  # the base; see below
    assert config["redis"]["share_health"] is False


def _loaded_deployment(tmp_path: Path, model_name: str) -> str:
    """The redis.deployment a host's gateway runs with: the file the user data wrote, loaded
    with the environment it gave the container."""
    rc, err, calls = boot(tmp_path, _values(gateway_config=render_example_config(model_name)))
    assert rc == 0, err
    cfg = load_config(tmp_path / "etc" / "gateway.toml", env=_env_of(_gateway_run(calls)))
    assert cfg.redis.share_health is False
    return cfg.redis.deployment


def test_a_new_config_is_a_new_fleet_as_the_gateway_loads_it(tmp_path: Path) -> None:
    """The first gateway of a fleet seeds Redis with its file, every later one adopts Redis's
    document: a host whose file changed (a new model here) must not join the old fleet, or its
    change never takes effect. The environment's name wins over the file's."""
    names = []
    for run, model in (("a", "m"), ("a-again", "m"), ("b", "another-model")):
        (tmp_path / run).mkdir()
        names.append(_loaded_deployment(tmp_path / run, model))
    assert all(re.fullmatch(r"aws-ap-southeast-[0-9a-f]{12}", n) for n in names), names
    assert names[0] == names[1]
    assert names[2] != names[0]


def test_the_template_says_what_a_drain_of_the_region_does() -> None:
    """A drain of ``<region>-local`` turns every host's /readyz 503. Under the group's ELB
    checks the group replaced them all, and the replacements adopted the still-drained
    document, again and again: the template warned against it. The group checks EC2's status
    now and the hosts' watchdog leaves a drain alone (test_aws_boot), so a drain takes the
    region out, as the template says, and no host is replaced."""
    template = (EXAMPLE / "gateway.toml.tftpl").read_text()
    redis = template[template.index("[redis]") : template.index("share_health")]
    comment = " ".join(ln.lstrip("# ") for ln in redis.splitlines() if ln.startswith("#"))
    assert "A drain of ${region_id}-local through the fleet" in comment
    assert "takes the region out" in comment and "No host is replaced" in comment
    assert "Route 53" in comment
    group = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    assert _unquote(group["health_check_type"]) == "EC2"
