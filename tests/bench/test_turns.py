"""bench/turns.py: trees take turns, the order reversed each round, and the table shows each
tree's median against the first tree's."""

from __future__ import annotations

from pathlib import Path

from bench.turns import parse_trees, take_turns, turns_table


def test_trees_take_turns_in_alternating_order(tmp_path: Path) -> None:
    trees = parse_trees([f"a={tmp_path}", "b=."])
    assert trees == {"a": str(tmp_path), "b": "."}
    calls: list[str] = []

    def measure(name: str, path: Path) -> float:
        calls.append(name)
        assert path.is_absolute()
        return {"a": 10.0, "b": 5.0}[name] + len(calls)

    per = take_turns(trees, 3, measure)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert per == {"a": [11.0, 14.0, 15.0], "b": [7.0, 8.0, 11.0]}
    table = turns_table(per, trees, "µs")
    assert table[0] == "| tree | path | µs | vs a | each round |"
    assert table[2] == f"| a | {tmp_path} | 14.0 | 1.00 | 11.0, 14.0, 15.0 |"
    assert table[3] == "| b | . | 8.0 | 0.57 | 7.0, 8.0, 11.0 |"
