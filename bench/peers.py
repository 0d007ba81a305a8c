"""Peers bench/overhead.py measures on request (``--peers litellm``), each installed in a
virtualenv of its own so that none of its dependencies reach geogate's.

LiteLLM proxy, pinned (LITELLM_VERSION), in ``.venv-litellm`` (git-ignored; made and filled by
pip on first use, a few minutes and a few hundred MB), configured lean, as an operator who
wants it fast would: one uvicorn worker, no database (no DATABASE_URL: no spend logs, no keys),
no master key, telemetry off, the model cost map read from the package instead of fetched,
logging at ERROR with uvicorn's access log off. The backend is named an OpenAI-compatible
endpoint (``openai/<model>`` with its api_base). The config goes into the results
(``describe``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

from gateway.cli.procs import spawn

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = ROOT / ".venv-litellm"
# target -> the app (bench/floor_proxy.py) and the server that runs it
FLOORS = {
    "floor-asgi": "asgi",
    "floor-rsgi": "rsgi",
    "floor-uvicorn": "asgi",
    "floor-h1": "asgi",
    "floor-splice": "asgi",
    "floor-pipe": "",  # bench/pipe_proxy.py: no app, bytes only
    "floor-pipe-parse": "",
    "floor-pipe-task": "",
}
PEERS = ("litellm", *FLOORS)
# Floors whose server speaks HTTP/1.1 only (uvicorn: h2 needs its TLS path); granian's two
# speak h2c as well.
H1_ONLY_FLOORS = tuple(f for f in FLOORS if f not in ("floor-asgi", "floor-rsgi"))
INSTALL_TIMEOUT_S = 1800


def litellm_exe() -> Path:
    """The pinned LiteLLM proxy's entry point, installing it first when missing or another
    version."""
    exe = LITELLM_VENV / "bin" / "litellm"
    py = LITELLM_VENV / "bin" / "python"
    if exe.exists():
        got = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if got == LITELLM_VERSION:
            return exe
    print(f"bench: installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV}", flush=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return exe


def litellm_config(model: str, backend: int | str) -> str:
    return f"""# LiteLLM proxy {LITELLM_VERSION}, lean: no database, telemetry off, logging at ERROR
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{backend}/v1
      api_key: none
litellm_settings:
  telemetry: false
  set_verbose: false
  drop_params: true
general_settings:
  # no master key: geogate and nginx check no credentials either (LiteLLM refuses to start
  # without one unless told that this is meant)
  dangerously_permit_weak_or_unset_master_key: true
"""


# uvicorn's logging: errors only, no access log (the lean setting; geogate's is measured on).
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "ERROR"},
    "loggers": {
        "uvicorn": {"level": "ERROR"},
        "uvicorn.error": {"level": "ERROR"},
        "uvicorn.access": {"level": "ERROR", "propagate": False},
        "LiteLLM": {"level": "ERROR"},
        "LiteLLM Proxy": {"level": "ERROR"},
        "LiteLLM Router": {"level": "ERROR"},
    },
}
ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start-up
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
}


def describe(model: str) -> str:
    return (
        f"LiteLLM proxy {LITELLM_VERSION} (own venv), 1 uvicorn worker, no database, no master "
        "key, telemetry off, LITELLM_LOG=ERROR, uvicorn access log off; the backend as "
        f"`openai/{model}` with its api_base (config: {model}.yaml in the results' work dir, "
        "and in the JSON)"
    )


def start_litellm(
    work: Path, model: str, backend: int, port: int, pin: list[str]
) -> subprocess.Popen[bytes]:
    """Start the proxy (``pin``: the taskset prefix); the caller waits for it."""
    exe = litellm_exe()
    cfg = work / "litellm.yaml"
    cfg.write_text(litellm_config(model, backend))
    logcfg = work / "litellm-log.json"
    logcfg.write_text(json.dumps(LOG_CONFIG))
    with patch.dict(os.environ, ENV):  # the environment as it was, afterwards
        os.environ.pop("DATABASE_URL", None)
        args = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--num_workers", "1", "--log_config", str(logcfg)]
        return spawn([*pin, *args], work / "litellm.log")


FLOOR_DESCRIPTIONS = {
    "floor-asgi": "bench/floor_proxy.py:asgi on granian (ASGI, uvloop, 1 worker) with geogate's "
    "upstream client (gateway.client) and nothing else: the stack's floor under geogate's own code",
    "floor-rsgi": "bench/floor_proxy.py:rsgi, the same proxy on granian's native RSGI interface",
    "floor-uvicorn": "bench/floor_proxy.py:asgi on uvicorn (uvloop, its own httptools protocol, "
    "1 worker; access log, proxy headers and Server header off, as geogate runs uvicorn): the same "
    "proxy on a server whose HTTP runs on the event loop's own thread",
    "floor-h1": "bench/floor_proxy.py:asgi on uvicorn with gateway.h1's protocol, as geogate "
    "runs it (`python bench/floor_proxy.py --port N`): the floor under geogate's default engine",
    "floor-splice": "floor-h1 whose stream bodies go by gateway.http.relay as geogate's do (the "
    "pipe, then the C splice; `python bench/floor_proxy.py --port N --splice`): the floor under "
    "geogate's streaming path",
    "floor-pipe": "bench/pipe_proxy.py: a byte pipe on uvloop, one upstream connection per client "
    "connection, no HTTP parsed: the event loop's own price per request, under any Python proxy",
    "floor-pipe-parse": "bench/pipe_proxy.py --parse: the same pipe, each upstream read also run "
    "through httptools' response parser (the bytes still go across as they came)",
    "floor-pipe-task": "bench/pipe_proxy.py --task: the same pipe parsing both ways, with an "
    "asyncio task per request that awaits the answer's head and end (futures)",
}


def start_floor(
    work: Path, target: str, backend: int, port: int, pin: list[str]
) -> subprocess.Popen[bytes]:
    """A floor on its server: bench/floor_proxy.py as geogate runs that server, or
    bench/pipe_proxy.py for the pipes; the caller waits for it (any path answers once it is
    up)."""
    app = f"bench.floor_proxy:{FLOORS[target]}"
    if target.startswith("floor-pipe"):
        args = [sys.executable, str(ROOT / "bench" / "pipe_proxy.py"), "--port", str(port)]
        args += ["--upstream", str(backend)]
        args += {"floor-pipe-parse": ["--parse"], "floor-pipe-task": ["--task"]}.get(target, [])
    elif target in ("floor-h1", "floor-splice"):
        args = [sys.executable, str(ROOT / "bench" / "floor_proxy.py"), "--port", str(port)]
        args += ["--splice"] if target == "floor-splice" else []
    elif target == "floor-uvicorn":
        exe = Path(sys.executable).with_name("uvicorn")
        args = [str(exe), "--loop", "uvloop", "--http", "httptools", "--workers", "1"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        args += ["--no-proxy-headers", "--no-server-header"]  # as gateway/server.py sets them
        args += ["--log-level", "warning", "--app-dir", str(ROOT), app]
    else:
        exe = Path(sys.executable).with_name("granian")
        args = [str(exe), "--interface", FLOORS[target], "--loop", "uvloop", "--workers", "1"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--no-ws", "--http", "auto"]
        args += ["--working-dir", str(ROOT), app]
    os.environ["FLOOR_UPSTREAM"] = f"http://127.0.0.1:{backend}"
    return spawn([*pin, *args], work / f"{target}.log")
