from __future__ import annotations

import matplotlib

from gateway.cli.charts import use_agg


def test_charts_draw_to_files_with_agg() -> None:
    # matplotlib is a dev dependency: present in the test venv
    assert use_agg()
    assert matplotlib.get_backend().lower() == "agg"
