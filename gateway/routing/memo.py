"""Rankings reused across requests: the router's deterministic part (``rank``) depends on the
request only through ``rank_key``, so within one snapshot and policy every request with the
same key gets the same ranking, and only the choice within the band (``pick``, which reads the
live in-flight counts and the rng) is made per request.

The memo lives beside the runtime, not in the router, which stays a pure function: it holds
rankings for the latest snapshot and policy only, tells them apart by identity (the store
hands out the same snapshot object until something it shows changes), and starts over when
either is replaced or it is full.
"""

from __future__ import annotations

import random

from gateway import defaults as d
from gateway.routing.model import Decision, Outcome, RequestFacts, Snapshot
from gateway.routing.policy import Policy
from gateway.routing.router import RankKey, pick, rank, rank_key


class RankMemo:
    """``rank`` memoised for one snapshot and one policy object, bounded by the candidates its
    rankings hold (``max_candidates``; a ranking counts its candidates plus one)."""

    __slots__ = ("_max", "_state", "weight")

    def __init__(self, max_candidates: int = d.ROUTE_MEMO_MAX_CANDIDATES) -> None:
        self._max = max_candidates
        self.weight = 0  # what the current table holds, as counted against max_candidates
        # One tuple, swapped whole: a reader that sees a snapshot also sees its own table,
        # never one left over from the snapshot before (should a runtime ever be shared by
        # threads). Holding the objects, not their id(), keeps an id from being reused.
        self._state: tuple[Snapshot | None, Policy | None, dict[RankKey, Decision]] = (
            None,
            None,
            {},
        )

    def rank(self, facts: RequestFacts, snap: Snapshot, policy: Policy) -> Decision:
        """What ``rank(facts, snap, policy)`` returns, computed once per key."""
        s, p, table = self._state
        if s is not snap or p is not policy:
            table = {}
            self._state = (snap, policy, table)
            self.weight = 0
        key = rank_key(facts, policy)
        ranked = table.get(key)
        if ranked is None:
            ranked = rank(facts, snap, policy)
            if ranked.outcome is Outcome.MODEL_NOT_FOUND:
                # Not kept: the model is whatever string a client sent (up to the body limit),
                # and a flood of made-up names must cost ranking time, never memory. A served
                # model's key is bounded by the config.
                return ranked
            cost = len(ranked.order) + 1
            if cost > self._max:  # larger than the whole memo: answered, not kept
                return ranked  # (and what is kept stays: clearing it would gain nothing)
            if self.weight + cost > self._max:
                # Starting over, rather than evicting one by one, keeps a hit free of
                # bookkeeping; the keys in use come back on their next request.
                table.clear()
                self.weight = 0
            table[key] = ranked
            self.weight += cost
        return ranked

    def route(
        self, facts: RequestFacts, snap: Snapshot, policy: Policy, rng: random.Random
    ) -> Decision:
        """``router.route``, with the ranking memoised: the same decision, the same rng draws."""
        return pick(self.rank(facts, snap, policy), snap.in_flight, rng)

    def __len__(self) -> int:
        return len(self._state[2])
