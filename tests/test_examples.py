"""examples/gateway.toml works on one machine as README says: three local simulated backends
and the file itself, with only its port numbers moved to free ones."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from gateway.cli.procs import free_port, geogate_cmd, spawn, stop, wait_http
from gateway.config_file import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gateway.toml"
MODEL = "llama-3.1-8b-instruct"


def test_every_address_in_the_example_is_loopback() -> None:
    config = load_config(EXAMPLE)
    hosts = {re.sub(r"^https?://([^/:]+).*", r"\1", u.url) for u in config.upstreams}
    assert hosts == {"127.0.0.1"}
    assert config.server.host == "127.0.0.1"


def test_the_example_config_serves_a_chat_completion(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    # Every listening port of the file (server, ops, ...) and every upstream port move to a
    # free one; nothing else changes.
    text = re.sub(r"(?m)^port = \d+", lambda m: f"port = {free_port()}", text)
    gw_port = int(re.findall(r"(?m)^port = (\d+)", text)[0])
    sims: list[subprocess.Popen[bytes]] = []
    try:
        for old in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
            port = free_port()
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{port}")
            region = load_config(EXAMPLE).upstreams[len(sims)].region
            cmd = ["sim-backend", "--region", region, "--port", str(port), "--model", MODEL]
            sims.append(spawn(geogate_cmd(*cmd, "--ttft-ms", "20", "--tokens-per-s", "50")))
            wait_http(f"http://127.0.0.1:{port}/health", proc=sims[-1])
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(text)
        gw = spawn(geogate_cmd("gateway", "--config", str(cfg)), tmp_path / "gw.log")
        sims.append(gw)
        wait_http(f"http://127.0.0.1:{gw_port}/readyz", proc=gw)
        r = httpx.post(
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert "region=" in r.headers["geogate-route"]
    finally:
        for p in sims:
            stop(p)
