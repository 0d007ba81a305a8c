"""The CLI's files: inputs that are not UTF-8 and outputs that cannot be written are one line
each, before the work where it can be known before."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.errors import CLIError
from gateway.cli.files import output_dir, read_text, writing
from gateway.cli.main import main


def test_text_that_is_not_utf8_names_the_line_and_the_byte(tmp_path: Path) -> None:
    f = tmp_path / "in.toml"
    f.write_bytes(b"a = 1\nb = 2\nc = '\xe9'\n")
    with pytest.raises(CLIError) as info:
        read_text(f, "plan")
    assert str(info.value) == f"plan: {f}:3: not UTF-8 text (byte 0xe9): save it as UTF-8"
    f.write_text("c = 'é'\n", encoding="utf-8")
    assert read_text(f, "plan") == "c = 'é'\n"
    with pytest.raises(CLIError, match=f"^plan: cannot read {tmp_path / 'no'}: No such file"):
        read_text(tmp_path / "no", "plan")


def test_an_output_folder_is_made_and_checked(tmp_path: Path) -> None:
    output_dir(tmp_path / "a" / "b", "world")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "f").write_text("")
    with pytest.raises(CLIError, match=r"^world: --out .*/f is a file, not a folder$"):
        output_dir(tmp_path / "f", "world")
    with pytest.raises(CLIError, match=r"^world: cannot write to --out .*/f/g: Not a directory$"):
        output_dir(tmp_path / "f" / "g", "world")


def test_a_write_that_fails_is_one_line(tmp_path: Path) -> None:
    message = f"^plan: cannot write to {tmp_path}: Is a directory$"
    with pytest.raises(CLIError, match=message), writing(tmp_path, "plan"):
        tmp_path.write_text("x")


@pytest.mark.parametrize("command", [["plan"], ["world"], ["dns", "export"]])
def test_an_empty_out_is_refused_before_anything_is_written(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Path("") is ".": `--out ''` (an empty variable in a script) wrote into the current folder.
    with pytest.raises(SystemExit) as info:
        main([*command, "--out", ""])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: is empty: name a path" in err and err.count("\n") == 1, err
