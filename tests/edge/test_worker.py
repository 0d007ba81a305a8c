"""The edge Worker's own tests (edge/test/*.test.js), run in workerd through Miniflare against
real regional gateways and simulated backends that this module starts: one gateway and one
backend in each of four regions, the gateways knowing each other's public URLs and the edge's
signing key. The node tests place clients with request.cf overrides and read the gateways'
ops listeners; this test passes when every one of them does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from geodb.regions import known_region

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "edge"
REGIONS = ("eu-central", "us-east", "ap-southeast", "sa-east")
OPS_TOKEN = "edge-test-ops-token"
KEY_ID = "k1"
SECRET = "edge-test-secret-0123456789abcdef0123456789"
NODE_TIMEOUT_S = 300  # the whole node run; it takes ~30 s on two cores


@dataclass
class Region:
    id: str
    port: int
    ops_port: int
    sim_port: int


def _config(r: Region, everyone: list[Region]) -> str:
    regions = "\n".join(
        f'[[regions]]\nid = "{o.id}"\nlatitude = {known_region(o.id).latitude}\n'
        f'longitude = {known_region(o.id).longitude}\nurl = "http://127.0.0.1:{o.port}"\n'
        for o in everyone
    )
    # Each gateway serves from its own backend only: when that backend dies the gateway has
    # nowhere to send a request, and the Worker must fail over to another region.
    return f"""
[gateway]
region = "{r.id}"
origin = "self"

[server]
port = {r.port}
extra_api_paths = ["/v1/echo"]
access_log = false

[ops]
port = {r.ops_port}
token = "{OPS_TOKEN}"

[edge]
keys = {{ {KEY_ID} = "{SECRET}" }}

[health]
interval_s = 0.2
timeout_s = 0.5
unhealthy_threshold = 1
healthy_threshold = 1

{regions}
[[upstreams]]
id = "{r.id}-1"
region = "{r.id}"
url = "http://127.0.0.1:{r.sim_port}"
models = ["m"]
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Four regions, started together; yields the spec file the node tests read."""
    tmp = tmp_path_factory.mktemp("edge")
    ports: set[int] = set()

    def port() -> int:
        p = free_port()
        while p in ports:
            p = free_port()
        ports.add(p)
        return p

    regions = [Region(rid, port(), port(), port()) for rid in REGIONS]
    procs: list[subprocess.Popen[bytes]] = []
    spec: dict[str, object] = {"ops_token": OPS_TOKEN, "key_id": KEY_ID, "secret": SECRET}
    spec["model"] = "m"
    try:
        sims = {}
        for r in regions:
            # Paced and stamped: the SSE test sees tokens spread over time, with send times.
            args = ["sim-backend", "--port", str(r.sim_port), "--region", r.id, "--name", r.id]
            args += ["--model", "m", "--tokens-per-s", "20", "--stamp"]
            sims[r.id] = spawn(geogate_cmd(*args), tmp / f"sim-{r.id}.log")
            procs.append(sims[r.id])
        for r in regions:
            cfg = tmp / f"{r.id}.toml"
            cfg.write_text(_config(r, regions))
            procs.append(spawn(geogate_cmd("gateway", "--config", str(cfg)), tmp / f"{r.id}.log"))
        for r, proc in zip(regions, procs[len(regions) :], strict=True):
            wait_http(f"http://127.0.0.1:{r.sim_port}/health", proc=sims[r.id])
            wait_http(f"http://127.0.0.1:{r.port}/readyz", proc=proc)
        spec["regions"] = {
            r.id: {
                "url": f"http://127.0.0.1:{r.port}",
                "ops_url": f"http://127.0.0.1:{r.ops_port}",
                "sim_pid": sims[r.id].pid,  # its own process group (the e2e test kills one)
                "sim_url": f"http://127.0.0.1:{r.sim_port}",  # its /stats
                "latitude": known_region(r.id).latitude,
                "longitude": known_region(r.id).longitude,
            }
            for r in regions
        }
        path = tmp / "spec.json"
        path.write_text(json.dumps(spec))
        yield path
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.timeout(NODE_TIMEOUT_S + 60)
def test_worker_in_workerd_against_real_gateways(fleet: Path) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the edge Worker's tests: scripts/dev test installs it"
    assert (EDGE / "node_modules" / "miniflare").is_dir(), (
        "edge/node_modules is missing: run scripts/dev test (it runs npm ci in edge/)"
    )
    files = sorted(str(p.relative_to(EDGE)) for p in (EDGE / "test").glob("*.test.js"))
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", "--test-reporter=spec", *files],
        cwd=EDGE,
        env={**os.environ, "GEOGATE_EDGE_E2E": str(fleet)},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    out = proc.stdout + proc.stderr
    print(out)  # pytest -s (or a failure) shows each node test
    assert proc.returncode == 0, f"the Worker's tests failed:\n{out[-8000:]}"
    # The spec reporter's closing lines: "<info sign> fail 0", "<info sign> skipped 0".
    assert re.search(r"^\S+ skipped 0$", out, re.M), "some Worker tests were skipped"
    assert "needs the gateways" not in out, "the tests against the gateways were skipped"
    assert re.search(r"^\S+ fail 0$", out, re.M)
