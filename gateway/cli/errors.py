"""The CLI's own error: one line for the person at the terminal, exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2  # what argparse exits with, and every CLI error here


class CLIError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, exit status 2: its own way prints the usage block
    first, several lines (five for ``geogate dns export``) in front of the one that says
    what is wrong. Subparsers are made of the parent's class, so the root's is enough."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
