"""A retry budget: retries may add only a share of recent request volume.

Without one, each failover multiplies load on the survivors exactly when they are weakest; with
it, an outage costs at most ``ratio`` extra load (Finagle's and Envoy's retry budgets). A
minimum rate keeps a quiet gateway able to retry at all. Counts live in one-second buckets.
"""

from __future__ import annotations

import math
from collections import deque


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float, window_s: float) -> None:
        self.ratio = ratio
        self.min_retries = min_per_s * window_s
        self.window = max(1, math.ceil(window_s))
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]
        self._requests = 0
        self._retries = 0

    def _bucket(self, now: float) -> list[int]:
        sec = int(now)
        while self._buckets and self._buckets[0][0] <= sec - self.window:
            _, req, ret = self._buckets.popleft()
            self._requests -= req
            self._retries -= ret
        if not self._buckets or self._buckets[-1][0] != sec:
            self._buckets.append([sec, 0, 0])
        return self._buckets[-1]

    def record_request(self, now: float) -> None:
        self._bucket(now)[1] += 1
        self._requests += 1

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget if there is one left."""
        bucket = self._bucket(now)
        if self._retries + 1 > max(self.min_retries, self.ratio * self._requests):
            return False
        bucket[2] += 1
        self._retries += 1
        return True
