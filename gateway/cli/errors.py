"""The CLI's own error: one line for the person at the terminal, exit status 2."""

from __future__ import annotations

# The model server's parser: argparse's errors in one line, the values they echo cut
# (``clipped``: ``geogate ctl`` followed by 100,000 characters was echoed whole as an invalid
# choice). Subparsers are made of the root's class, so every geogate command's are too.
from backend.cli import EXIT_USAGE
from backend.cli import OneLineParser as OneLineParser

__all__ = ["EXIT_USAGE", "CLIError", "OneLineParser"]


class CLIError(Exception):
    pass
