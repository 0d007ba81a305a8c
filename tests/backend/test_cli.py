"""``geogate backend`` arguments, refused before the model loads (so no model here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from backend import cli, sim_cli


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
        (sim_cli.main, ["--port", "x"], "geogate sim-backend: error: argument --port: invalid"),
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
