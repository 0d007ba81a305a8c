"""``geogate backend ...``: serve a model, or make the tiny test model."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from backend.errors import BackendError, clipped

if TYPE_CHECKING:
    from backend.loader import Loaded

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
DRAIN_TIMEOUT_S = 25.0  # SIGTERM: requests in flight get this long, then are cut
MAX_DRAIN_TIMEOUT_S = 3600.0
# aiohttp's own cut (shutdown_timeout), this long after BackendServer's: its default, 60 s,
# outlasted every supervisor's grace (Docker 10 s, Kubernetes 30 s), and at the same moment as
# ours the two raced inside aiohttp (its waiter cancelled, then set: an error logged).
DRAIN_BACKSTOP_S = 1.0
MAX_PORT = 65535

log = logging.getLogger("geogate.backend")


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, exit status 2: its own way prints the usage block
    first, several lines (five for ``geogate dns export``) in front of the one that says
    what is wrong. Subparsers are made of the parent's class, so the root's is enough. The
    gateway's CLI uses this one too (gateway.cli.errors): this package imports nothing of it."""

    def error(self, message: str) -> NoReturn:
        # The values it echoes cut (clipped): a 300-digit --port was printed whole.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {clipped(message)} (see {self.prog} --help)\n")


def port(text: str) -> int:
    """``--port``'s type: 1 to 65535 (70000 was listened on as 4464, -1 was a traceback)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no port number") from None
    if not 1 <= n <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{n} is no port: 1 to {MAX_PORT}")
    return n


def check_listen(host: str, port: int) -> None:
    """BackendError naming why ``host:port`` cannot be listened on (in use, not this machine's
    address), before the model loads: that was a traceback after minutes of loading."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own
            s.bind(addr)
    except OSError as exc:  # gaierror included: a host name that does not resolve
        raise BackendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _serve(argv: Sequence[str]) -> None:
    p = OneLineParser(prog="geogate backend", description="Serve a local Hugging Face causal LM.")
    p.add_argument("--model", type=Path, required=True, help="local model directory")
    p.add_argument("--quantize", choices=["none", "int8", "nf4", "int8-dynamic"], default="none")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, required=True)
    p.add_argument("--served-model-name", help="model name in the API (default: dir name)")
    p.add_argument("--max-batch", type=int, default=None, help="running sequences (16)")
    p.add_argument(
        "--max-waiting",
        type=int,
        default=None,
        help="queued requests beyond what the batch takes at once (64; 0: no queue)",
    )
    p.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="let torch run attention on cuDNN (CUDA; off by default: it plans every new "
        "shape, and decoding makes one each token; see bench/results/gpu_attention.md)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help=f"on SIGTERM, seconds requests in flight get to finish before they are cut "
        f"({DRAIN_TIMEOUT_S:g}: under Kubernetes' 30 s grace; give docker stop -t more)",
    )
    a = p.parse_args(argv)
    if not 0 <= a.drain_timeout <= MAX_DRAIN_TIMEOUT_S:
        raise BackendError(
            f"--drain-timeout must be 0 to {MAX_DRAIN_TIMEOUT_S:g} seconds, got {a.drain_timeout:g}"
        )
    # Before the model loads (minutes for a big one): -1 spun the engine thread at 100% CPU,
    # 0 silently became the default.
    if a.max_batch is not None and a.max_batch < 1:
        raise BackendError(f"--max-batch must be at least 1, got {a.max_batch}")
    if a.max_waiting is not None and a.max_waiting < 0:
        raise BackendError(f"--max-waiting must be at least 0, got {a.max_waiting}")
    check_listen(a.host, a.port)
    import aiohttp.web  # noqa: F401  (a missing dependency said before minutes of loading)

    # The model's directory is checked (load_model's first step) before the engine's imports,
    # torch's among them: a mistyped --model took seconds to say so.
    from backend.loader import load_model

    _run(
        a,
        load_model(a.model, a.quantize, a.dtype, a.device, a.served_model_name, a.cudnn_attention),
    )


def _run(a: argparse.Namespace, loaded: Loaded) -> None:
    """Serve ``loaded`` as the arguments ``a`` say, until a signal drains the server."""
    from aiohttp import web

    from backend.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAITING, Engine
    from backend.metrics import BackendMetrics
    from backend.server import BackendServer

    metrics = BackendMetrics(loaded.name)
    if loaded.device == "cuda":
        metrics.enable_gpu()
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        loaded.device,
        max_batch=a.max_batch if a.max_batch is not None else DEFAULT_MAX_BATCH,
        max_waiting=a.max_waiting if a.max_waiting is not None else DEFAULT_MAX_WAITING,
        observer=metrics,
    )
    server = BackendServer(loaded, engine, metrics, a.drain_timeout)
    # handler_cancellation: a client that disconnects cancels its handler at once, which
    # marks the sequence cancelled; the engine drops it at the next decode step.
    web.run_app(
        server.app(),
        host=a.host,
        port=a.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        # The cut at --drain-timeout is BackendServer's; aiohttp's, a backstop (see
        # DRAIN_BACKSTOP_S), has to wait for that cut's handlers to end.
        shutdown_timeout=a.drain_timeout + DRAIN_BACKSTOP_S,
    )
    if server.failure:  # the warm-up failed and stopped the server: say why, exit non-zero
        raise BackendError(server.failure)
    _exit_drained()


def _exit_drained() -> NoReturn:
    """Drained and stopped: the interpreter's own teardown (torch, the model) took another
    2.7 s of a 3.7 s stop with --drain-timeout 1 on the tiny model, which a supervisor's grace
    counts too. Nothing is left to run; the log goes out first."""
    log.info("stopped")
    _exit_now(0)


def _exit_now(status: int, line: str = "") -> NoReturn:
    """Out at once, ``line`` on stderr and the log flushed first: no interpreter teardown (of
    a torch perhaps caught half imported, whose INFO lines a review saw after a traceback).
    A further SIGTERM or Ctrl-C now takes the same way out."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if line:
        print(line, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _make_tiny(argv: Sequence[str]) -> None:
    p = OneLineParser(prog="geogate backend make-tiny-model")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--preset",
        choices=["tiny", "small", "medium", "1b", "7b"],
        default="tiny",
        help="tiny (~160k parameters), small (~3M), medium (~90M), 1b (~1.1B) or 7b "
        "(LLaMA-2-7B's shapes, 6.7B: use --dtype bfloat16 --device cuda)",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to draw weights")
    a = p.parse_args(argv)
    if a.device == "cuda":  # before the build: torch without CUDA asserted, in a traceback
        from backend.loader import check_device

        check_device("cuda")
    _out_dir(a.dir)
    from backend.tiny import PRESETS, make_tiny_model

    try:
        n = make_tiny_model(a.dir, PRESETS[a.preset], a.dtype, a.device)
    except OSError as exc:  # the disk filled up, say
        raise BackendError(f"cannot write the model to {a.dir}: {exc.strerror or exc}") from None
    print(f"wrote a random Llama model ({n:,} parameters) and its tokenizer to {a.dir}")


def _out_dir(path: Path) -> None:
    """Make the output directory before the model is built (minutes for 7b): where it could
    not be made (/proc/x, an existing file), that was a traceback once the model was built."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BackendError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise BackendError(f"cannot make the directory {path}: {exc.strerror or exc}") from None


def main(argv: Sequence[str]) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        if argv[:1] == ["make-tiny-model"]:
            _make_tiny(argv[1:])
        else:
            _serve(argv)
    except BackendError as exc:
        print(f"geogate backend: {clipped(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:  # Ctrl-C before serving (the model loading): was a traceback
        _exit_now(EXIT_INTERRUPTED, "geogate backend: interrupted")
    except ImportError as exc:
        # An ImportError raised by hand (not by a failed import) has no module name.
        missing = f"{exc.name} is not installed" if exc.name else str(exc).splitlines()[0]
        print(
            f"geogate backend: {missing}; install the backend extra: "
            "pip install 'geogate[backend]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":  # python -m backend.cli: the server without the gateway package
    main(sys.argv[1:])
