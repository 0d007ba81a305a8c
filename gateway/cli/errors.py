"""The CLI's own error: one line for the person at the terminal, exit status 2."""

from __future__ import annotations


class CLIError(Exception):
    pass
