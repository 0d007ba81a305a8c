"""A run's temporary folder (its processes' logs and configs, a built model): removed when the
run ends well, kept when it fails or is stopped (its logs say what went wrong) or when asked,
and then said where. Every ``geogate world`` run left one in /tmp (with ``--backend model``
a 600 KB model in it), as ``geogate demo`` did before it removed its own the same way."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def work_folder(prefix: str, keep: bool = False, what: str = "logs") -> Iterator[Path]:
    """A new folder under the system's temporary directory, named ``prefix...``. ``what``
    names its contents in the line printed when it is kept."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    ended_well = False
    try:
        yield work
        ended_well = True
    finally:
        if ended_well and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:  # on stdout: stderr's one line is the error's, when there is one
            print(f"{what} kept in {work}", flush=True)
