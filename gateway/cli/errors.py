"""The CLI's own error: one line for the person at the terminal, exit status 2."""

from __future__ import annotations

from backend.cli import EXIT_USAGE, OneLineParser

__all__ = ["EXIT_USAGE", "CLIError", "OneLineParser"]


class CLIError(Exception):
    pass
