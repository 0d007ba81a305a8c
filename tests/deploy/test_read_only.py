"""Read-only root filesystems: every container of compose.yaml and both containers of the AWS
hosts' boot script run with their root read-only, and write only where a tmpfs or a volume is
mounted for what their process writes. No engine runs here: compose.yaml is read as
docker-compose `config` gives it, the boot script's `docker run`s as test_aws_boot runs them,
and the model server's HOME and caches as the libraries that write there resolve them."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.config_file import load_config
from tests.deploy.conftest import ROOT
from tests.deploy.test_compose import DOCKER, _config
from tests.deploy.test_dockerfile import _documented_run, _env, _stages

GATEWAY_IMAGE = "geogate-gateway:local"
BACKEND = DOCKER / "Dockerfile.backend"
# The caches under HOME the model server's libraries write: huggingface_hub's (transformers
# and the bitsandbytes kernels it fetches), torch hub's, torch inductor's and Triton's compiled
# kernels (dlopened: the tmpfs must allow exec), the CUDA driver's PTX cache.
CACHE_VARS = (
    "XDG_CACHE_HOME",
    "HF_HOME",
    "TORCH_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "CUDA_CACHE_PATH",
)


def _under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def _tmpfs(specs: list[str]) -> dict[str, list[str]]:
    """`/path:opt,opt=v` (docker run --tmpfs, compose's tmpfs) -> {path: [options]}."""
    out = {}
    for spec in specs:
        path, _, opts = spec.partition(":")
        out[path] = opts.split(",") if opts else []
    return out


# --- compose.yaml ----------------------------------------------------------------------------


def _gateway_image_writes(svc: dict[str, Any]) -> dict[str, str]:
    """Where a container of the gateway image writes: Python's tempfile (the gateway's worker
    sockets and fleet document, the sims' uploads) and a gateway's redis.state_file."""
    env = _env(_stages(DOCKER / "Dockerfile.gateway")[-1])
    writes = {env.get("TMPDIR", "/tmp"): "tmpfs"}
    if svc["command"][0] == "gateway":
        config = svc["command"][svc["command"].index("--config") + 1]
        (mounted,) = [v for v in svc.get("volumes", []) if v.split(":")[1] == config]
        cfg = load_config(Path(mounted.split(":")[0]), env=svc.get("environment") or {})
        if cfg.redis.state_file is not None:
            writes[str(cfg.redis.state_file.parent)] = "volume"  # to outlive the container
    return writes


def _writes(name: str, svc: dict[str, Any]) -> dict[str, str]:
    """path -> the mount it needs ("tmpfs": either; "volume": kept, so a named volume)."""
    if svc.get("image") == GATEWAY_IMAGE:
        return _gateway_image_writes(svc)
    if name == "redis":
        # No RDB, no AOF: nothing is written. Either one on would write in /data.
        args = " ".join(svc["command"])
        return {} if "--save  --appendonly no" in args else {"/data": "volume"}
    if name == "prometheus":
        flag = [a for a in svc.get("command", []) if a.startswith("--storage.tsdb.path=")]
        return {flag[0].split("=", 1)[1] if flag else "/prometheus": "volume"}
    if name == "grafana":
        writes = {"/var/lib/grafana": "volume", "/tmp": "tmpfs"}
        if "file" in svc.get("environment", {}).get("GF_LOG_MODE", "console file"):
            writes["/var/log/grafana"] = "tmpfs"
        return writes
    raise AssertionError(f"{name}: a new service; say here where it writes")


def _problems(compose: dict[str, Any]) -> list[str]:
    out = []
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        if svc.get("read_only") is not True:
            out.append(f"{name}: root not read-only")
        tmpfs = _tmpfs(svc.get("tmpfs", []))
        # source:target[:mode], or a bare target (an anonymous volume, source "")
        volumes = [v.split(":") if ":" in v else ["", v] for v in svc.get("volumes", [])]
        writable = {v[1]: v[0] for v in volumes if "ro" not in v[2:]}
        for path, kind in _writes(name, svc).items():
            if kind == "volume" and writable.get(path) not in named:
                out.append(f"{name}: {path} needs a named volume")
            elif kind == "tmpfs" and not _under(path, set(tmpfs) | set(writable)):
                out.append(f"{name}: {path} needs a tmpfs")
        for path, opts in tmpfs.items():
            if not {"noexec", "nosuid", "nodev"} <= set(opts) or not any(
                o.startswith("size=") for o in opts
            ):
                out.append(f"{name}: tmpfs {path} without noexec,nosuid,nodev and a size")
    return out


def _compose_config(path: Path) -> dict[str, Any]:
    p = _config(path)
    assert p.returncode == 0, p.stderr
    doc: dict[str, Any] = yaml.safe_load(p.stdout)
    return doc


def test_every_compose_service_is_read_only_and_writes_only_where_mounted() -> None:
    compose = _compose_config(DOCKER / "compose.yaml")
    assert _problems(compose) == []
    # The gateways' config keeps no state file (it would need a volume; see _writes).
    assert load_config(DOCKER / "gateway.compose.toml", env={}).redis.state_file is None


def test_the_compose_check_can_fail(tmp_path: Path) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    broken = text.replace("    read_only: true   # no RDB", "    # no RDB", 1)
    broken = broken.replace("      GF_LOG_MODE: console", "      GF_X: console", 1)
    broken = broken.replace("      - grafana-data:/var/lib/grafana", "      - /var/lib/grafana", 1)
    assert broken.count("read_only: true") == text.count("read_only: true") - 1
    broken = broken.replace("../", f"{DOCKER.parent}/").replace("./gateway", f"{DOCKER}/gateway")
    (tmp_path / "compose.yaml").write_text(broken)
    problems = _problems(_compose_config(tmp_path / "compose.yaml"))
    assert sorted(problems) == [
        "grafana: /var/lib/grafana needs a named volume",
        "grafana: /var/log/grafana needs a tmpfs",
        "redis: root not read-only",
    ]
    # A state file in the gateways' config needs a volume where it is kept.
    config = tmp_path / "gateway.toml"
    config.write_text(
        (DOCKER / "gateway.compose.toml")
        .read_text()
        .replace('deployment = "compose"', f'deployment = "compose"\nstate_file = "{tmp_path}/f"')
    )
    compose = _compose_config(DOCKER / "compose.yaml")
    for name in ("gateway-a", "gateway-b"):
        svc = compose["services"][name]
        svc["volumes"] = [f"{config}:/etc/geogate/gateway.toml:ro"]
    assert f"gateway-a: {tmp_path} needs a named volume" in _problems(compose)


# --- the AWS hosts' containers ---------------------------------------------------------------


def _docker_options(args: list[str], image: str) -> tuple[list[str], dict[str, str]]:
    """docker run's options before the image, and its -e NAME=value variables."""
    head = args[: args.index(image)]
    env = dict(head[i + 1].split("=", 1) for i, a in enumerate(head) if a == "-e")
    return head, env


def _tmpfs_of(head: list[str]) -> dict[str, list[str]]:
    return _tmpfs([head[i + 1] for i, a in enumerate(head) if a == "--tmpfs"])


def _passwd_home(dockerfile: Path) -> str:
    (home,) = re.findall(r"useradd [^\n]*--home-dir (\S+)", dockerfile.read_text())
    return str(home)


def _backend_env(run_env: dict[str, str]) -> dict[str, str]:
    """The model server's environment: the image's ENV, docker run's -e over it, and HOME as
    docker sets it when neither does (the image user's passwd entry)."""
    env = {**_env(_stages(BACKEND)[-1]), **run_env}
    env.setdefault("HOME", _passwd_home(BACKEND))
    return env


def _backend_problems(head: list[str], run_env: dict[str, str]) -> list[str]:
    out = []
    if "--read-only" not in head:
        out.append("root not read-only")
    tmpfs = _tmpfs_of(head)
    env = _backend_env(run_env)
    home = env["HOME"]
    opts = tmpfs.get(home)
    if opts is None:
        out.append(f"HOME {home} is no tmpfs")
    elif "exec" not in opts or "uid=10001" not in opts or "mode=0700" not in opts:
        out.append(f"HOME {home}: tmpfs without exec, uid=10001, mode=0700: {opts}")
    for var in CACHE_VARS:
        if not _under(env.get(var, ""), {home}):
            out.append(f"{var} ({env.get(var)}) is not under HOME")
    if "noexec" not in tmpfs.get(env.get("TMPDIR", "/tmp"), []):
        out.append("no noexec tmpfs on /tmp")
    return out


def test_the_hosts_containers_run_read_only_with_a_tmpfs_where_they_write(tmp_path: Path) -> None:
    from tests.deploy.test_aws_boot import _values, boot, render_example_config

    rc, err, calls = boot(tmp_path, _values(gateway_config=render_example_config()))
    assert rc == 0, err
    runs = {
        c["args"][c["args"].index("--name") + 1]: c["args"]
        for c in calls
        if c["args"][:1] == ["run"]
    }
    head, env = _docker_options(runs["geogate-backend"], _values()["backend_image"])
    assert _backend_problems(head, env) == []
    assert head[head.index("--stop-timeout") + 1] == "30"  # its earlier flags kept
    assert head[head.index("--user") + 1] == "10001:10001"
    head, _ = _docker_options(runs["geogate-gateway"], _values()["gateway_image"])
    assert "--read-only" in head
    assert set(_tmpfs_of(head)) == {"/tmp"} and "noexec" in _tmpfs_of(head)["/tmp"]
    # The example config keeps no state file: with one, /var/lib/geogate would be read-only.
    (tmp_path / "gateway.toml").write_text(render_example_config())
    assert load_config(tmp_path / "gateway.toml", env={}).redis.state_file is None


def test_every_documented_backend_run_gives_the_server_a_writable_home() -> None:
    """The Dockerfile's header and README run the image as the boot script does."""
    readme = (ROOT / "README.md").read_text()
    (quoted,) = re.findall(r"`(docker run --gpus all [^`]*geogate-backend)`", readme)
    for argv in (_documented_run(BACKEND), shlex.split(quoted)):
        head, env = _docker_options(argv, "geogate-backend")
        assert _backend_problems(head, env) == [], argv


def test_the_backend_check_can_fail() -> None:
    """HOME as it was: the passwd entry's /nonexistent, no tmpfs, caches nowhere writable."""
    head = ["docker", "run", "--stop-timeout", "30"]
    problems = _backend_problems(head, {"HOME": "/nonexistent", "XDG_CACHE_HOME": "/x"})
    assert problems[:2] == ["root not read-only", "HOME /nonexistent is no tmpfs"]
    assert "XDG_CACHE_HOME (/x) is not under HOME" in problems


CACHE_PROBE = """
import json
import huggingface_hub.constants as hf
import torch.hub
from torch._inductor.runtime.cache_dir_utils import cache_dir
print(json.dumps({"hf": hf.HF_HOME, "hub": hf.HF_HUB_CACHE, "torch": torch.hub.get_dir(),
                  "inductor": cache_dir()}))
"""


def test_the_libraries_read_the_cache_variables_the_image_sets(tmp_path: Path) -> None:
    """The image's variables are the ones huggingface_hub and torch read: with the image's
    environment (HOME moved to tmp_path) each cache lands under HOME. Triton's
    (TRITON_CACHE_DIR) and the CUDA driver's (CUDA_CACHE_PATH) need a GPU build: named only."""
    env = _backend_env({})
    home = env["HOME"]
    moved = {k: v.replace(home, str(tmp_path / "home")) for k, v in env.items() if k != "PATH"}
    p = subprocess.run(
        [sys.executable, "-c", CACHE_PROBE],
        env={**moved, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    dirs = json.loads(p.stdout.strip().splitlines()[-1])
    for what, path in dirs.items():
        assert _under(path, {str(tmp_path / "home")}), (what, path)
