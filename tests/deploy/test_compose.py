"""deploy/docker/compose.yaml: Debian's docker-compose (1.29, the Python one) accepts it with
`config` (no engine runs here: nothing is built or started), everything it mounts exists, and
the gateways' config file is one geogate loads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from gateway.config_file import load_config
from tests.deploy.conftest import DEPLOY, tool

DOCKER = DEPLOY / "docker"


def _config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("docker-compose"), "-f", str(path), "config"],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_accepts_it() -> None:
    p = _config(DOCKER / "compose.yaml")
    assert p.returncode == 0, p.stderr
    services = yaml.safe_load(p.stdout)["services"]
    assert set(services) == {
        "redis",
        "sim-eu-central",
        "sim-us-east",
        "sim-ap-southeast",
        "gateway-a",
        "gateway-b",
        "prometheus",
        "grafana",
    }
    # Published ports stay on the host's loopback.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_docker_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: a misspelt service key is refused."""
    text = (DOCKER / "compose.yaml").read_text().replace("stop_grace_period:", "stop_grace:")
    (tmp_path / "compose.yaml").write_text(text)
    p = _config(tmp_path / "compose.yaml")
    assert p.returncode != 0
    assert "stop_grace" in p.stderr


def test_mounted_files_exist_and_the_gateway_config_loads() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):  # a named volume: declared, made by compose
                assert source in compose["volumes"], f"{name} mounts {source}, not declared"
                continue
            assert (DOCKER / source).exists(), f"{name} mounts {source}, which is not there"
    cfg = load_config(DOCKER / "gateway.compose.toml")
    assert {u.region for u in cfg.upstreams} == {r.id for r in cfg.regions}
    assert cfg.redis.url.startswith("redis://redis:")
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert {t.split(":")[0] for t in targets} == set(compose["services"]) - {
        "redis",
        "prometheus",
        "grafana",
    }
