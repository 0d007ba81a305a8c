"""deploy/prometheus: promtool (Debian's prometheus package) checks the config and the rules
and runs the rules' unit tests; every alert must have a test in which it fires."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, tool

PROM = DEPLOY / "prometheus"


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_rules_and_config_are_valid() -> None:
    p = _promtool("check", "rules", "alerts.yml")
    assert p.returncode == 0, p.stdout + p.stderr
    p = _promtool("check", "config", "prometheus.yml")
    assert p.returncode == 0, p.stdout + p.stderr


def test_rule_unit_tests_pass() -> None:
    p = _promtool("test", "rules", "alerts_test.yml")
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert len(alerts) >= 8
    assert alerts - fired == set(), f"alerts without a test where they fire: {alerts - fired}"
    # And one where it must not (pending, below its threshold, a series it must leave alone):
    # an expression that always fires passes every test of the first kind.
    assert alerts - quiet == set(), f"alerts without a test where they stay quiet: {alerts - quiet}"


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the queue alert at 4 minutes (it is
    still pending then) is refused."""
    text = (PROM / "alerts_test.yml").read_text()
    firing = "eval_time: 6m\n        exp_alerts:\n          - exp_labels: {severity: warning"
    assert text.count(firing) == 1
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "alerts_test.yml").write_text(text.replace(firing, firing.replace("6m", "4m")))
    p = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert p.returncode != 0
    assert "GeogateRequestsQueued" in p.stdout + p.stderr


def test_the_absence_alert_lists_no_regions_of_its_own() -> None:
    """GeogateRegionAbsent finds the fleet's regions in their history (up over 6 h), not in a
    list that another fleet's region ids would make page for ever."""
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "GeogateRegionAbsent"
    ]
    assert "max_over_time(up{" in rule["expr"] and "label_replace" not in rule["expr"]


def test_the_aws_scrape_sketch_is_a_valid_config(tmp_path: Path) -> None:
    """prometheus.yml's commented AWS jobs (ec2_sd_configs, running instances only, the ops
    token as bearer token), uncommented, pass `promtool check config`."""
    lines = (PROM / "prometheus.yml").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  # - job_name: "))
    sketch = [re.sub(r"^  # ", "  ", ln) for ln in lines[start:] if ln.startswith("  #")]
    token = tmp_path / "geogate-ops-token"
    token.write_text("x" * 16)
    text = "scrape_configs:\n" + "\n".join(sketch) + "\n"
    text = text.replace("/etc/prometheus/geogate-ops-token", str(token))
    (tmp_path / "aws.yml").write_text(text)
    jobs = {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}
    assert set(jobs) == {"geogate-backend", "geogate-gateway"}
    assert jobs["geogate-gateway"]["authorization"]["credentials_file"] == str(token)
    for job in jobs.values():
        (sd,) = job["ec2_sd_configs"]
        assert {"name": "instance-state-name", "values": ["running"]} in sd["filters"]
    p = _promtool("check", "config", "aws.yml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_new_target_gets_the_autoscaling_groups_grace() -> None:
    """GeogateTargetDown leaves a target alone until it has been up or has been a target for
    its warm-up: with EC2 service discovery a host is a target from its first second, and it
    listens only once its images are pulled and its model loaded, which the autoscaling group
    allows health_check_grace_period for. The unit tests (alerts_test.yml) show both sides: a
    booting host never fires, one that was up and went down fires after 2 minutes."""
    from tests.deploy.test_aws_hosts import REGION, _locals, _resources

    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "GeogateTargetDown"
    ]
    expr = rule["expr"]
    (offset,) = re.findall(r"\boffset (\d+)m\b", expr)
    (window,) = re.findall(r"max_over_time\(up\{[^}]*\}\[(\d+)m\]\)", expr)
    group = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    (hook,) = group["initial_lifecycle_hook"]  # how long a boot may take before its host goes
    boot = {group["health_check_grace_period"], hook["heartbeat_timeout"]}
    assert boot == {"${local.host_ready_timeout_s}"}, boot
    assert int(offset) * 60 >= _locals(REGION)["host_ready_timeout_s"]
    # Up within the window, or a target since before it: no gap between the two.
    assert int(window) >= int(offset)
    assert rule["for"] == "2m"


def test_every_alert_says_what_to_do_with_commands_that_exist() -> None:
    # The page at 3 a.m. carries its first steps (a `runbook` annotation); each `geogate ctl`
    # subcommand and option it names must be one the CLI has.
    from gateway.cli.main import _parser

    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return sub.choices

    ctl = choices(_parser())["ctl"]
    subcommands = set(choices(ctl))
    options = {o for sub in choices(ctl).values() for a in sub._actions for o in a.option_strings}
    named = []
    for alert in alerts:
        notes = alert["annotations"]
        assert notes.get("summary") and notes.get("description"), alert["alert"]
        assert len(notes.get("runbook", "")) > 40, f"{alert['alert']} has no runbook"
        named += re.findall(r"geogate ctl (\w+)", notes["runbook"])
        flags = re.findall(r"geogate ctl \w+[^;,)]*?(--[a-z-]+)", notes["runbook"])
        assert set(flags) <= options, (alert["alert"], set(flags) - options)
    assert named and set(named) <= subcommands, set(named) - subcommands
