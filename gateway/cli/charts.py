"""Charts of the commands that draw one (``geogate world``, ``geogate plan``): matplotlib is an
optional extra (``pip install geogate[charts]``), and it draws to files, never to a screen."""

from __future__ import annotations


def use_agg() -> bool:
    """Point matplotlib at its file-only Agg backend (a server has no display, and pyplot
    would otherwise pick a GUI one); False when matplotlib is not installed. Call it before
    the first ``import matplotlib.pyplot``."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    return True
