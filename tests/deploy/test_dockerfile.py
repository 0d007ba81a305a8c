"""deploy/docker/Dockerfile.gateway builds the C extension (gateway._splice) and fails
without it; its .dockerignore keeps the context small and host-built files out. No engine
runs here: the Dockerfile is read, and its build stage's wheel is built from exactly the files
that stage copies (the context as the .dockerignore leaves it), offline, with this machine's
gcc and CPython headers where the image has build-essential and python:3.11's. Where the
gateway listens is its config file's say, never the image's environment."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import hcl2
import pytest
import yaml

from gateway.config_file import load_config
from tests.deploy.conftest import DEPLOY, ROOT

DOCKER = DEPLOY / "docker"
TF_EXAMPLE = DEPLOY / "terraform" / "aws" / "example"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    return out


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(dockerfile):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether a .dockerignore's patterns leave `path` (relative to the context) out: a
    pattern matches the path or a folder above it; `*` within a name, `**` across folders."""

    def regex(p: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", p.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(regex(p).fullmatch(pre) for p in patterns for pre in prefixes)


def _ignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name}: BuildKit's ignore file for {dockerfile.name}"
    lines = ignore.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _copied(stage: list[tuple[str, str]]) -> list[str]:
    sources = []
    for word, args in stage:
        if word == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    return sources


def test_the_build_stage_compiles_the_extension_and_the_image_requires_it() -> None:
    build, runtime = _stages(DOCKER / "Dockerfile.gateway")
    assert build[0][1].endswith(" AS build")
    build_runs = " ".join(a for w, a in build if w == "RUN")
    assert "build-essential" in build_runs  # the slim image has no gcc
    assert {"setup.py", "pyproject.toml", "gateway"} <= set(_copied(build))
    assert "pip wheel" in build_runs
    # The image that runs: the wheel from the build stage, no compiler, and a build that
    # fails when the extension is missing (setup.py marks it optional).
    assert ("COPY", "--from=build /wheels /tmp/wheels") in runtime
    runtime_runs = [a for w, a in runtime if w == "RUN"]
    assert not [a for a in runtime_runs if "build-essential" in a or "gcc" in a]
    (install,) = [a for a in runtime_runs if "pip install" in a]
    assert 'python -c "import gateway._splice"' in install
    assert install.index("pip install") < install.index("import gateway._splice")
    assert [w for w, _ in runtime][-2:] == ["ENTRYPOINT", "CMD"]


def test_the_build_stages_files_make_a_wheel_with_the_extension(tmp_path: Path) -> None:
    """What the build stage copies, less what the .dockerignore leaves out (a host-built
    .so in particular), is enough for `pip wheel` to build gateway._splice into the wheel.
    Without setup.py, as before, the wheel was pure Python and every stream took the
    Python relay."""
    dockerfile = DOCKER / "Dockerfile.gateway"
    patterns = _ignore_patterns(dockerfile)
    src = tmp_path / "src"
    src.mkdir()
    for source in _copied(_stages(dockerfile)[0]):
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if not _ignored(patterns, rel):
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, src / rel)
    assert not list(src.rglob("*.so")), "a host-built extension would reach the image"
    p = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(tmp_path / "wheels"), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = (tmp_path / "wheels").glob("geogate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if re.fullmatch(r"gateway/_splice\..*\.so", n)], names
    assert "-py3-none-any" not in wheel.name


def test_the_dockerignore_keeps_the_context_small_and_what_copy_needs() -> None:
    for name in ("Dockerfile.gateway", "Dockerfile.backend"):
        dockerfile = DOCKER / name
        patterns = _ignore_patterns(dockerfile)
        for path in (
            ".git/HEAD",
            ".venv/bin/python",
            ".venv-checkov/bin/checkov",
            "bench/results/round14/x.json",
            "node_modules/x/index.js",
            "edge/node_modules/x/index.js",
            "build/lib/gateway/_splice.so",
            "gateway/_splice.cpython-311-x86_64-linux-gnu.so",
            "gateway/__pycache__/config.cpython-311.pyc",
        ):
            assert _ignored(patterns, path), f"{name}: {path} reaches the build context"
        copied = [s for stage in _stages(dockerfile) for s in _copied(stage)]
        for source in copied:
            assert not _ignored(patterns, source), f"{name}: COPY {source} is ignored"
        for kept in ("gateway/_splice.c", "gateway/http/splice.py", "bench/peers.py"):
            assert not _ignored(patterns, kept), kept


def _pattern_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_builders_without_per_dockerfile_ignores_read_the_same_patterns() -> None:
    # The classic builder (DOCKER_BUILDKIT=0, Debian 12's docker.io) reads only the context's
    # .dockerignore: without one it sent .venv and .git and copied a host-built .so.
    root = _pattern_lines(DOCKER.parents[1] / ".dockerignore")
    for name in ("Dockerfile.gateway", "Dockerfile.backend"):
        assert _pattern_lines(DOCKER / f"{name}.dockerignore") == root, name


def test_the_image_has_a_directory_the_gateway_can_keep_its_state_file_in() -> None:
    # redis.state_file needs a writable directory at start (gateway.config_file), and the
    # gateway runs as geogate, which could write nowhere but /tmp.
    text = (DOCKER / "Dockerfile.gateway").read_text()
    line = "RUN install -d -o geogate -g geogate -m 0700 /var/lib/geogate"
    assert line in text and text.index(line) < text.index("USER geogate")
    assert (
        "/var/lib/geogate/fleet.json" in (DOCKER.parents[1] / "examples/gateway.toml").read_text()
    )


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The variables a stage's ENV lines set (NAME=value forms)."""
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_a_mounted_config_says_where_the_gateway_listens(tmp_path: Path) -> None:
    """GEOGATE_* variables win over the config file: the image's ENV GEOGATE_SERVER__HOST /
    GEOGATE_OPS__HOST=0.0.0.0 made a mounted config's `[ops] host = "127.0.0.1"` listen on
    every interface (under --network host, the host's: the ops endpoints exposed). The image
    sets no GEOGATE_* variable; its own config says 0.0.0.0, and the configs that compose and
    the AWS hosts mount say it themselves."""
    dockerfile = DOCKER / "Dockerfile.gateway"
    runtime = _stages(dockerfile)[-1]
    env = _env(runtime)
    assert not [k for k in env if k.startswith("GEOGATE_")], env
    # A config mounted over the image's, loaded with the image's environment, keeps its hosts.
    (tmp_path / "gateway.toml").write_text((ROOT / "examples" / "gateway.toml").read_text())
    mounted = load_config(tmp_path / "gateway.toml", env=env)
    assert (mounted.server.host, mounted.ops.host) == ("127.0.0.1", "127.0.0.1")
    # The image's own config: the example, copied and its listeners moved beyond the
    # container's loopback by the stage's own RUN line, run here on a copy.
    (copy,) = [a for w, a in runtime if w == "COPY" and a.endswith(" /etc/geogate/gateway.toml")]
    source = copy.split()[0]
    assert source == "examples/gateway.toml"
    assert not _ignored(_ignore_patterns(dockerfile), source)
    (edit,) = [a for w, a in runtime if w == "RUN" and "/etc/geogate/gateway.toml" in a]
    baked = tmp_path / "image.toml"
    baked.write_text((ROOT / source).read_text())
    cmd = edit.replace("/etc/geogate/gateway.toml", str(baked))
    subprocess.run(["bash", "-c", cmd], check=True)
    image = load_config(baked, env=env)
    example = load_config(ROOT / "examples" / "gateway.toml", env={})
    assert image == example.model_copy(
        update={
            "server": example.server.model_copy(update={"host": "0.0.0.0"}),
            "ops": example.ops.model_copy(update={"host": "0.0.0.0"}),
        }
    )
    # The configs mounted over it say where they listen, in the file.
    for path in (DOCKER / "gateway.compose.toml", TF_EXAMPLE / "gateway.toml.tftpl"):
        text = path.read_text()
        for section in ("server", "ops"):
            block = text[text.index(f"[{section}]\n") :]
            block = block[: block.index("\n[")]
            assert re.search(r'^host = "0\.0\.0\.0"', block, re.M), f"{path.name} [{section}]"


# --- Dockerfile.backend: the model's name in the API ----------------------------------------

GEOGATE_STUB = """
import json, os, sys
with open(os.environ["STUB_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "pid": os.getpid()}, f)
"""
# `docker run` options that take a value (the rest used here are flags).
DOCKER_RUN_VALUES = {
    *("-e", "-p", "-v", "--gpus", "--name", "--user", "--security-opt", "--ulimit", "--tmpfs"),
    *("--stop-timeout", "--restart", "--network", "--env-file"),
}


def docker_run(argv: list[str]) -> tuple[dict[str, str], str, list[str]]:
    """A `docker run ...` command line's -e variables, image, and arguments after the image."""
    assert argv[:2] == ["docker", "run"], argv
    env: dict[str, str] = {}
    i = 2
    while argv[i].startswith("-"):
        if argv[i] in DOCKER_RUN_VALUES:
            if argv[i] == "-e":
                name, _, value = argv[i + 1].partition("=")
                env[name] = value
            i += 2
        else:
            i += 1
    return env, argv[i], argv[i + 1 :]


def run_image(
    dockerfile: Path, tmp: Path, env: dict[str, str], args: list[str]
) -> tuple[list[str], bool]:
    """The image's last stage run as docker runs it: ENTRYPOINT (exec form), then docker
    run's arguments or else CMD, in the stage's ENV with docker run's -e over it; the
    `geogate` it starts is a stand-in recording its argv and pid. Returns that argv and
    whether it is the process docker started (exec'd: PID 1 in the container, SIGTERM's)."""
    stage = _stages(dockerfile)[-1]
    (entrypoint,) = [json.loads(a) for w, a in stage if w == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for w, a in stage if w == "CMD"]
    bin_ = tmp / "bin"
    bin_.mkdir(parents=True, exist_ok=True)
    (bin_ / "geogate").write_text(f"#!{sys.executable}\n{GEOGATE_STUB}")
    (bin_ / "geogate").chmod(0o755)
    image_env = {k: v for k, v in _env(stage).items() if k != "PATH"}
    out = tmp / "argv.json"
    out.unlink(missing_ok=True)
    full_env = {**image_env, **env, "PATH": f"{bin_}:/usr/bin:/bin", "STUB_OUT": str(out)}
    p = subprocess.Popen([*entrypoint, *(args or cmd)], env=full_env, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=30)
    if p.returncode != 0:
        raise RuntimeError(err.decode())
    seen = json.loads(out.read_text())
    return seen["argv"], seen["pid"] == p.pid


def served_model_name(argv: list[str]) -> str | None:
    """--served-model-name as `geogate backend`'s argparse reads it (the last one wins)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--served-model-name")
    assert argv[0] == "backend", argv
    name: str | None = p.parse_known_args(argv[1:])[0].served_model_name
    return name


def _example_model_name() -> str:
    for block in hcl2.loads((TF_EXAMPLE / "variables.tf").read_text())["variable"]:
        if '"model_name"' in block:
            return str(block['"model_name"']["default"]).strip('"')
    raise AssertionError("aws/example declares no model_name")


def _documented_run(dockerfile: Path) -> list[str]:
    """The `docker run` of the Dockerfile's header comment (lines joined at `\\`)."""
    lines = [ln.lstrip("#").strip() for ln in dockerfile.read_text().splitlines()]
    (start,) = [i for i, ln in enumerate(lines) if ln.startswith("docker run")]
    end = start
    while lines[end].endswith("\\"):
        end += 1
    return shlex.split(" ".join(ln.rstrip("\\") for ln in lines[start : end + 1]))


def test_the_backend_serves_the_model_under_the_name_clients_ask_for(tmp_path: Path) -> None:
    """Without --served-model-name the server names the model after its directory, "model"
    (/model): the documented run answered requests for llama-3.1-8b-instruct, the examples'
    model, with 404. MODEL_NAME names it (default the examples'), through a shell that execs
    the server (SIGTERM reaches it); a --served-model-name argument still wins."""
    dockerfile = DOCKER / "Dockerfile.backend"
    assert _env(_stages(dockerfile)[-1])["MODEL_NAME"] == _example_model_name()
    documented = _documented_run(dockerfile)
    env, image, args = docker_run(documented)
    assert image == "geogate-backend" and "-v" in documented
    argv, execd = run_image(dockerfile, tmp_path, env, args)
    assert served_model_name(argv) == "llama-3.1-8b-instruct"
    assert execd, "the shell must exec the server"
    assert argv[argv.index("--model") + 1] == "/model"
    # README's run (no -e): the image's default name.
    readme = (ROOT / "README.md").read_text()
    (quoted,) = re.findall(r"`(docker run --gpus all [^`]*geogate-backend)`", readme)
    argv, _ = run_image(dockerfile, tmp_path, *docker_run(shlex.split(quoted))[::2])
    assert served_model_name(argv) == "llama-3.1-8b-instruct"
    # Another name, by MODEL_NAME or by the argument; none at all refuses to start.
    argv, _ = run_image(dockerfile, tmp_path, {"MODEL_NAME": "qwen2.5-7b"}, [])
    assert served_model_name(argv) == "qwen2.5-7b"
    args = ["--model", "/model", "--served-model-name", "mine", "--port", "8000"]
    argv, _ = run_image(dockerfile, tmp_path, {}, args)
    assert served_model_name(argv) == "mine"
    with pytest.raises(RuntimeError, match="MODEL_NAME"):
        run_image(dockerfile, tmp_path, {"MODEL_NAME": ""}, [])


# --- stop timeouts: longer than the drain they end --------------------------------------------

DOCKER_DEFAULT_STOP_S = 10.0  # docker stop without -t, docker run without --stop-timeout


def _stop_timeout(run: list[str]) -> float:
    if "--stop-timeout" in run:
        return float(run[run.index("--stop-timeout") + 1])
    return DOCKER_DEFAULT_STOP_S


def _backend_drain_s(argv: list[str]) -> float:
    """How long `geogate backend` with these arguments may take to stop after SIGTERM: its
    --drain-timeout, then aiohttp's backstop."""
    from backend.cli import DRAIN_BACKSTOP_S, DRAIN_TIMEOUT_S

    drain = DRAIN_TIMEOUT_S
    if "--drain-timeout" in argv:
        drain = float(argv[argv.index("--drain-timeout") + 1])
    return drain + DRAIN_BACKSTOP_S


def test_every_stop_outlasts_the_drain_it_ends(tmp_path: Path) -> None:
    """SIGTERM drains (the gateway for server.drain_timeout_s, the model server for its
    --drain-timeout); the engine's SIGKILL comes after the stop timeout, docker's own 10 s
    unless told otherwise, and cut every stream still in flight. The documented runs of the
    model server (the Dockerfile's header, README's) gave it none."""
    from tests.deploy.test_aws_boot import _values, boot, render_example_config

    dockerfile = DOCKER / "Dockerfile.backend"
    readme = (ROOT / "README.md").read_text()
    (quoted,) = re.findall(r"`(docker run --gpus all [^`]*geogate-backend)`", readme)
    for documented in (_documented_run(dockerfile), shlex.split(quoted)):
        env, _, args = docker_run(documented)
        argv, _ = run_image(dockerfile, tmp_path / "image", env, args)
        assert _stop_timeout(documented) > _backend_drain_s(argv), documented
    # The AWS hosts' two containers, as the boot script starts them.
    (tmp_path / "boot").mkdir()
    rc, err, calls = boot(tmp_path / "boot", _values(gateway_config=render_example_config()))
    assert rc == 0, err
    runs = {
        c["args"][c["args"].index("--name") + 1]: c["args"]
        for c in calls
        if c["args"][:1] == ["run"]
    }
    backend = runs["geogate-backend"]
    image = backend.index(_values()["backend_image"])
    argv, _ = run_image(dockerfile, tmp_path / "image", {}, backend[image + 1 :])
    assert _stop_timeout(backend) > _backend_drain_s(argv)
    (tmp_path / "gateway.toml").write_text(render_example_config())
    aws_drain = load_config(tmp_path / "gateway.toml", env={}).server.drain_timeout_s
    assert _stop_timeout(runs["geogate-gateway"]) > aws_drain
    # compose's gateways, with their own config.
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    compose_drain = load_config(DOCKER / "gateway.compose.toml", env={}).server.drain_timeout_s
    for name in ("gateway-a", "gateway-b"):
        grace = compose["services"][name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace), grace
        assert float(grace[:-1]) > compose_drain, name
