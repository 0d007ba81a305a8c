"""The bill of each placement one region larger than a given one, without evaluating it: the
beam search (gateway/plan/search.py) prices thousands of growths a round.

Adding a region moves only the demand rows it becomes the nearest or the next-nearest region
of, so only the regions those rows leave or join are sized anew (their normal load and each
failover case that sends rows to them); every other region keeps its sizing, its egress and so
its line of the bill. The figures are ``evaluate``'s to the last digit: the same sums in the
same order, and the bill an exact sum of the lines (math.fsum), whatever order they come in
(tests/gateway/plan/test_grow.py checks them against it). Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence

from gateway.plan.inputs import PlanInput
from gateway.plan.model import Table, line_usd, ordered_sum


class Growths:
    """One placement (``ids``), ready to price its growths."""

    def __init__(self, p: PlanInput, t: Table, ids: Sequence[str]) -> None:
        self.p = p
        self.t = t
        self.near = t.nearest(ids)
        self.back_rank = [s for _, s in self.near]
        self.first = [t.order[i][f] for i, (f, _) in enumerate(self.near)]  # each row's region
        self.served: dict[str, list[int]] = {g: [] for g in ids}  # rows each region serves
        self.backs: dict[str, list[int]] = {g: [] for g in ids}  # rows it is next-nearest of
        for i, (f, s) in enumerate(self.near):
            self.served[t.order[i][f]].append(i)
            if s != t.none:
                self.backs[t.order[i][s]].append(i)
        self.usd = {g: self._line(g, self.served[g], self.backs[g], self.first) for g in ids}

    def _line(self, g: str, served: list[int], backs: list[int], first: Sequence[str]) -> float:
        """Region g's line: sized for its normal load or, when the region ``first`` of some
        of its ``backs`` rows fails, for those rows added to its own (``_sizing``'s sums)."""
        load = self.t.load
        cases: dict[str, list[int]] = {}
        for i in backs:
            cases.setdefault(first[i], []).append(i)
        peak = max(
            [ordered_sum(load, served)]
            + [ordered_sum(load, sorted(served + rows)) for rows in cases.values()]
        )
        egress = ordered_sum(self.t.egress, served)
        return line_usd(self.p, self.t.by_id[g], peak, egress, self.t.where[g])

    def rows(self, cid: str) -> list[int]:
        """The rows region ``cid`` would become the nearest or the next-nearest region of.
        None: it would serve nobody, even in a failover, and change no region's sizing, so
        the placement would cost that region's bill more and be no faster."""
        rank = self.t.rank[cid]
        return list(itertools.compress(range(len(rank)), map(operator.lt, rank, self.back_rank)))

    def bill(self, cid: str, rows: list[int]) -> tuple[float, list[int]]:
        """The monthly bill with region ``cid`` added (``rows``: its ``rows``), and the rows
        it would serve (their RTT is now cid's; every other row's is the same)."""
        t, near, col = self.t, self.near, self.t.rank[cid]
        taken = [i for i in rows if col[i] < near[i][0]]  # cid becomes their nearest
        backed = [i for i in rows if col[i] > near[i][0]]  # ... their next-nearest
        lost, moved = set(taken), set(rows)
        first = list(self.first)
        for i in taken:
            first[i] = cid
        lose = {self.first[i] for i in taken}  # serve fewer rows, back the rows they lost
        unbacked = {t.order[i][near[i][1]] for i in rows if near[i][1] != t.none}
        usd = dict(self.usd)
        for g in lose | unbacked:
            served = [i for i in self.served[g] if i not in lost]
            backs = [i for i in self.backs[g] if i not in moved]
            backs = sorted(backs + [i for i in taken if self.first[i] == g])
            usd[g] = self._line(g, served, backs, first)
        usd[cid] = self._line(cid, taken, backed, self.first)
        return math.fsum(usd.values()), taken
