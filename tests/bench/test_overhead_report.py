"""The overhead report's streaming table: CPU per stream by schedstat's nanoseconds beside
the 10 ms ticks', which move by a third with the clock at a few hundred µs a stream."""

from __future__ import annotations

from bench.overhead_cells import Row
from bench.overhead_report import _row_doc, _streaming


def _row(target: str, ticks_ms: float, fine_ms: float) -> Row:
    return Row(
        target, "streaming", "h1", 16, 48.0, 330.0, 340.0, 100, 0,
        cpu_ms_per_req=ticks_ms, cpu_fine_ms_per_req=fine_ms, ttft_p50_ms=20.0, ttft_p99_ms=25.0,
    )  # fmt: skip


def test_the_streaming_table_gives_the_nanosecond_clocks_ratio_too() -> None:
    # Round fourteen's overhead_litellm: 417 against 208 µs by ticks, 414 against 268 by ns.
    rows = [_row("nginx", 0.208, 0.268), _row("geogate", 0.417, 0.414)]
    table = _streaming(rows)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    cells = [c.strip() for c in table[3].strip("|").split("|")]
    line = dict(zip(header, cells, strict=True))
    assert line["CPU vs nginx"] == "2.00"  # the ticks'
    assert (line["CPU µs/req (ns clock)"], line["vs nginx (ns clock)"]) == ("414", "1.54")
    assert _row_doc(rows, rows[1])["cpu_fine_vs_nginx"] == "1.54"
