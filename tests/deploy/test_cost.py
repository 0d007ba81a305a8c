"""deploy/cost.py: README's "What it costs" table from a hand-copied price list. The prices
cannot be checked here (no network); what is checked: README's table is the script's output,
the quantities are the Terraform's, and the line items the first table left out are in it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import hcl2
import pytest

from gateway import defaults as d
from gateway.dns.route53 import INTERVALS
from tests.deploy.conftest import DEPLOY, ROOT
from tests.deploy.test_aws_hosts import EXAMPLE, REGION, _resources, _unquote

SCRIPT = DEPLOY / "cost.py"


def _cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_cost", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n### What it costs") :]
    section = section[: section.index("\n## ")]
    return "\n".join(ln for ln in section.splitlines() if ln.startswith("|"))


def test_the_readme_table_is_the_scripts_output() -> None:
    """The table came from no command: hand arithmetic that left out whole line items. It is
    `python deploy/cost.py`'s output now, so a changed price or quantity changes both."""
    p = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=True
    )
    assert p.stdout.strip() == _cost().table()
    assert _readme_table() == p.stdout.strip()


def test_the_table_has_what_the_first_one_left_out() -> None:
    """NAT gateways and what they process, the model and image fetched at each boot (across
    regions for two of them), EC2 detailed monitoring (the launch template turns it on), and
    the health checks' HTTPS and fast interval, each billed as a feature of its own."""
    cost = _cost()
    items = {r.item: r for r in cost.rows()}
    for item in (
        "NAT gateways",
        "NAT data processing",
        "inter-region transfer at boot",
        "EC2 detailed monitoring",
        "Route 53 health checks",
    ):
        assert items[item].usd > 0, item
    checks = items["Route 53 health checks"]
    assert "HTTPS" in checks.unit_price and "fast interval" in checks.unit_price
    assert f"{cost.MODEL_GB} GB" in items["NAT data processing"].quantity
    total = sum(r.usd for r in cost.rows())
    assert f"**${total:,.0f} + LCUs and queries**" in cost.table()
    # Every price says where it came from.
    assert all(p.source for p in cost.PRICES.values())


def test_the_quantities_are_the_terraforms() -> None:
    cost = _cost()
    region_vars: dict[str, object] = {}
    for block in hcl2.loads((REGION / "variables.tf").read_text())["variable"]:
        region_vars.update({k.strip('"'): v for k, v in block.items()})
    tfvars = (EXAMPLE / "terraform.tfvars.example").read_text()
    desired = [int(n) for n in re.findall(r"desired_capacity = (\d+)", tfvars)]
    assert sum(desired) == cost.HOSTS and cost.REGIONS == len(desired) == 3
    assert f"root_volume_gb = {cost.VOLUME_GB}\n" in tfvars
    assert region_vars["root_volume_gb"]["default"] == cost.VOLUME_GB  # type: ignore[index]
    node_type = region_vars["redis_node_type"]["default"]  # type: ignore[index]
    assert _unquote(node_type) == "cache.r7g.large" and node_type.strip('"') in cost.PRICES
    redis = _resources(REGION)[("aws_elasticache_replication_group", "fleet")]
    assert cost.REGIONS * redis["num_cache_clusters"] == cost.REDIS_NODES
    lt = _resources(REGION)[("aws_launch_template", "gpu")]
    assert lt["monitoring"] == [{"enabled": True, "__is_block__": True}]
    # `geogate dns export`'s checks: HTTPS (the regions' https:// URLs), at the shortest
    # interval Route 53 has for the gateway's default check interval: the fast one.
    assert next(i for i in INTERVALS if i >= d.DNS_CHECK_INTERVAL_S) == 10


def _script(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60
    )


def test_help_says_what_it_prints() -> None:
    """--help, like every argument, was ignored: the table printed with exit status 0."""
    p = _script("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: deploy/cost.py [-h]\n")
    assert "What it costs" in p.stdout and "| item |" not in p.stdout


def test_an_argument_it_does_not_take_is_one_line() -> None:
    p = _script("--regions", "5")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == (
        "deploy/cost.py: error: unrecognized arguments: --regions 5 (see deploy/cost.py --help)\n"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux only)")
def test_a_full_disk_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, str(SCRIPT)], stdout=full, stderr=subprocess.PIPE, text=True,
            timeout=60,
        )  # fmt: skip
    assert p.returncode == 1
    assert p.stderr == "deploy/cost.py: cannot write the table: No space left on device\n"
