"""``geogate backend`` arguments, refused before the model loads (so no model here)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend import cli, sim_cli
from backend.errors import SHOWN_MAX_CHARS
from gateway.cli.procs import free_port


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--max-batch", "-1", "--max-batch must be at least 1, got -1"),  # spun at 100% CPU
        ("--max-batch", "0", "--max-batch must be at least 1, got 0"),  # became the default
        ("--max-waiting", "-1", "--max-waiting must be at least 0, got -1"),
    ],
)
def test_batch_and_queue_bounds_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, words: str
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path / "none"), "--port", "1", flag, value])
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == f"geogate backend: {words}"


@pytest.mark.parametrize(
    ("main", "argv", "line"),
    [
        (cli.main, ["--port", "1"], "geogate backend: error: the following arguments are"),
        (cli.main, ["make-tiny-model"], "geogate backend make-tiny-model: error: the following"),
        (sim_cli.main, ["--port", "x"], "geogate sim-backend: error: argument --port: 'x' is no"),
        # The value echoed is cut: a 300-digit port was printed whole.
        (
            sim_cli.main,
            ["--port", "9" * 300],
            f"geogate sim-backend: error: argument --port: {'9' * SHOWN_MAX_CHARS}… is no port",
        ),
        (
            cli.main,
            ["--port", "1", "--model", "m", "--dtype", "x" * 300],
            f"geogate backend: error: argument --dtype: invalid choice: '{'x' * 99}…'",
        ),
    ],
)
def test_argument_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    main: Callable[[list[str]], None],
    argv: list[str],
    line: str,
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "70000"], "error: argument --port: 70000 is no port: 1 to 65535"),  # was 4464
        (["--port", "-1"], "error: argument --port: -1 is no port: 1 to 65535"),  # a traceback
        (["--port", "1", "--max-concurrency", "-1"], "--max-concurrency must be at least 0"),
        (["--port", "1", "--max-waiting", "-1"], "--max-waiting must be at least 0"),
        (["--port", "1", "--max-waiting", "2"], "--max-waiting needs --max-concurrency"),
        (["--port", "1", "--tokens", "-3"], "--tokens must be at least 0"),  # a 500 each
        (["--port", "1", "--error-status", "99"], "--error-status must be 400 to 599"),
        (["--port", "1", "--error-status", "200"], "--error-status must be 400 to 599"),
        (["--port", "1", "--drain-timeout", "-1"], "--drain-timeout must be 0 to 3600 seconds"),
        (["--port", "1", "--drain-timeout", "nan"], "--drain-timeout must be 0 to 3600 seconds"),
        # TEST-NET-1 is on no machine: binding to it fails, nothing is sent.
        (["--port", "8000", "--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000: "),
    ],
)
def test_sim_bounds_and_listen_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as e:
        sim_cli.main(argv)
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("main", [cli.main, sim_cli.main], ids=["backend", "sim-backend"])
def test_a_port_in_use_is_one_line_before_any_model_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    taken_port: int,
    main: Callable[[list[str]], None],
) -> None:
    # The model server said so in a traceback after loading its model (minutes for a big one):
    # no model directory here, and the port's error comes first.
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "none"), "--port", str(taken_port)])
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"cannot listen on 127.0.0.1:{taken_port}: Address already in use" in err


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """make-tiny-model's errors must come before the build: minutes for a large preset."""
    from backend import tiny

    def never(*args: object, **kwargs: object) -> int:
        raise AssertionError("the model was built")

    monkeypatch.setattr(tiny, "make_tiny_model", never)


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize(
    ("where", "words"),
    [
        (lambda tmp: "/proc/x", "cannot make the directory /proc/x: No such file or directory"),
        (lambda tmp: tmp / "file", "exists and is not a directory"),  # FileExistsError
        (lambda tmp: tmp / "file" / "sub", "cannot make the directory"),  # NotADirectoryError
    ],
)
def test_a_tiny_model_directory_that_cannot_be_made_is_one_line_before_the_build(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: Callable[[Path], object],
    words: str,
) -> None:
    # Each was a traceback, once the model was built.
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        cli.main(["make-tiny-model", str(where(tmp_path))])
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.usefixtures("no_build")
def test_a_tiny_model_on_cuda_without_it_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch built without CUDA asserted ("Torch not compiled with CUDA enabled"), a traceback.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.main(["make-tiny-model", str(tmp_path / "m"), "--device", "cuda"])
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "geogate backend: --device cuda: this machine has no CUDA GPU; use --device cpu\n"
    assert not (tmp_path / "m").exists()


def test_a_missing_model_directory_is_said_before_torch_is_imported(tmp_path: Path) -> None:
    """The engine's imports (torch: seconds) came first, and then the directory's check."""
    probe = (
        "import sys\n"
        "from backend import cli\n"
        "try:\n"
        f"    cli.main(['--model', {str(tmp_path / 'nope')!r}, '--port', '{free_port()}'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == f"{cli.EXIT_USAGE} False", done.stdout + done.stderr
    assert "does not exist" in done.stderr
