"""Before/after pairs of source trees measured in one sitting: the trees take turns, the order
reversed each round, so a drift of this VM in time favours no tree's place in the round
(bench/own_path.py and bench/whole_path.py --tree)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path


def parse_trees(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments, in their order."""
    return dict(spec.split("=", 1) for spec in specs)


def take_turns(
    trees: dict[str, str], rounds: int, measure: Callable[[str, Path], float]
) -> dict[str, list[float]]:
    """``measure(name, path)`` for each tree, ``rounds`` times, in alternating order."""
    per: dict[str, list[float]] = {name: [] for name in trees}
    order = list(trees.items())
    for _ in range(rounds):
        for name, path in order:
            per[name].append(measure(name, Path(path).resolve()))
        order.reverse()
    return per


def turns_table(per: dict[str, list[float]], trees: dict[str, str], unit: str) -> list[str]:
    """A markdown table: each tree's median, its ratio to the first tree's, and each round."""
    first = next(iter(per))
    base = statistics.median(per[first])
    lines = [
        f"| tree | path | {unit} | vs {first} | each round |",
        "|---|---|---|---|---|",
    ]
    for name, values in per.items():
        med = statistics.median(values)
        each = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {trees[name]} | {med:.1f} | {med / base:.2f} | {each} |")
    return lines
