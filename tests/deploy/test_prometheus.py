"""deploy/prometheus: promtool (Debian's prometheus package) checks the config and the rules
and runs the rules' unit tests; every alert must have a test in which it fires."""

from __future__ import annotations

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


def test_every_alert_has_a_test_where_it_fires() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert len(alerts) >= 8
    assert alerts - fired == set(), f"alerts without a test where they fire: {alerts - fired}"


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the GPU alert at 4 minutes (it is
    still pending then) is refused."""
    text = (PROM / "alerts_test.yml").read_text()
    firing = "eval_time: 6m\n        exp_alerts:\n          - exp_labels: {severity: warning"
    assert text.count(firing) == 1
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "alerts_test.yml").write_text(text.replace(firing, firing.replace("6m", "4m")))
    p = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert p.returncode != 0
    assert "GeogateGPUBusy" in p.stdout + p.stderr
