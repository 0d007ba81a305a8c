"""The example's per-host gateways in Redis: one fleet per region, health kept per host."""

from __future__ import annotations

import tomllib

from tests.deploy.test_aws_hosts import render_example_config


def test_each_region_is_a_fleet_of_its_own_and_each_host_keeps_its_health() -> None:
    """Every host's file lists one upstream, ``<region>-local``, its own model server. In one
    fleet for all regions the first host's file would become every host's (the fleet's routing
    config); within a region the files are alike, and the fleet's drains apply to all of its
    hosts. That upstream is another server on each host: no host may vote on another's."""
    config = tomllib.loads(render_example_config())
    assert [u["id"] for u in config["upstreams"]] == ["ap-southeast-local"]
    assert config["redis"]["deployment"] == "aws-ap-southeast"
    assert config["redis"]["share_health"] is False
