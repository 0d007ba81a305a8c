"""The files the CLI's commands read and write: inputs read as UTF-8 text, output folders
checked before the work starts, every failure one line (``CLIError``), never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.cli.errors import CLIError
from gateway.config_file import read_config_bytes


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is: a file saved as Latin-1 or UTF-16 by an
    editor or a spreadsheet looks fine on screen."""
    line = exc.object[: exc.start].count(b"\n") + 1
    return f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save it as UTF-8"


def read_text(path: Path, who: str, unreadable: str = "cannot read {path}: {why}") -> str:
    """The file's text, decoded whole (the error's offset is then the file's), from a regular
    file of at most CONFIG_MAX_BYTES. ``unreadable``: what an OSError says, with ``{path}``
    and ``{why}`` (its strerror), for a file whose caller knows what to do about it."""
    try:
        # As a config file is read (a plan's or an RTT table's is kilobytes): /dev/zero was
        # read until memory ran out.
        data = read_config_bytes(path)
    except OSError as exc:
        said = unreadable.format(path=path, why=exc.strerror)
        raise CLIError(f"{who}: {said}") from None
    except ValueError as exc:
        raise CLIError(f"{who}: {path} {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{who}: {not_utf8(path, exc)}") from None


def out_path(text: str) -> Path:
    """An argparse type for --out: not empty (Path("") is ".": `--out ''`, an empty variable
    in a script, wrote into the current folder without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name a path")
    return Path(text)


def output_dir(path: Path, who: str) -> None:
    """Make the folder ``path`` (and its parents) and check that a file can be written in it:
    before the work, as a run can take minutes, and its results would be lost at the end."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"{who}: --out {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CLIError(f"{who}: cannot write to --out {path}: {exc.strerror}") from None


@contextlib.contextmanager
def writing(path: Path, who: str) -> Iterator[None]:
    """What goes wrong while the results are written (a full disk) is one line too."""
    try:
        yield
    except OSError as exc:
        raise CLIError(f"{who}: cannot write to {path}: {exc.strerror}") from None
