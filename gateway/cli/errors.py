"""The CLI's own error: one line for the person at the terminal, exit status 2."""

from __future__ import annotations

from typing import NoReturn

from backend.cli import EXIT_USAGE
from backend.cli import OneLineParser as BackendParser
from gateway.errors import clipped

__all__ = ["EXIT_USAGE", "CLIError", "OneLineParser"]


class CLIError(Exception):
    pass


class OneLineParser(BackendParser):
    """argparse's errors in one line, the values they echo cut (``gateway.errors.clipped``):
    ``geogate ctl`` followed by 100,000 characters was echoed whole as an invalid choice."""

    def error(self, message: str) -> NoReturn:
        super().error(clipped(message))
