"""Dashboard sessions ended before their time (a logout): the one piece of session state.

A session is a signed cookie that every worker and gateway accepts on its own
(gateway.http.dashboard.session), so a logout that only deleted the browser's copy left a copied
cookie valid for the rest of its 12 hours. The logout now names the session here, until its
expiry, and a session named here is no session. In memory for one gateway; with Redis in a
sorted set (session id -> expiry, unix time) that every worker reads back at each refresh, so
a logout ends the session fleet-wide within ``redis.refresh_interval_s``. Entries leave as
their sessions expire: the set holds at most the logouts of one session lifetime.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.defaults import ENDED_SESSIONS_MAX
from gateway.fleet.keys import Keys


class EndedSessions:
    """Session id -> the unix time it would have expired; pure (the clock is passed in)."""

    def __init__(self, limit: int = ENDED_SESSIONS_MAX) -> None:
        self.limit = limit
        self._until: dict[str, float] = {}
        # Full of live ones, the soonest to end goes, and every session that ends no later
        # than it is ended from then on: a forgotten logout brought its session back (10,000
        # logouts later, a copied cookie worked again), where now older sessions, ended or
        # not, log in again. Sessions last alike, so these are the ones begun before it.
        self._floor = 0.0

    def end(self, sid: str, until: float, now: float) -> None:
        if len(self._until) >= self.limit:
            self.prune(now)
        if len(self._until) >= self.limit:  # still full of live ones: the soonest to end goes
            soonest = min(self._until, key=self._until.__getitem__)
            self._floor = max(self._floor, self._until.pop(soonest))
        self._until[sid] = until

    def ended(self, sid: str, until: float) -> bool:
        """Whether the session ``sid``, which would expire at ``until``, was ended."""
        return sid in self._until or until <= self._floor

    def merge(self, now: float, ended: dict[str, float], floor: float = 0.0) -> None:
        """What the fleet holds (Redis), added to what is known here: an ended session never
        starts again, so a read that missed a logout made here meanwhile, or a Redis that lost
        the set, forgets none. ``floor``: the read's (``read``)."""
        self.prune(now)
        self._floor = max(self._floor, floor)
        for sid, until in ended.items():
            if sid not in self._until:
                self.end(sid, until, now)

    def held(self) -> dict[str, float]:
        return dict(self._until)

    def prune(self, now: float) -> None:
        self._until = {s: t for s, t in self._until.items() if t > now}

    def __len__(self) -> int:
        return len(self._until)


async def end(r: Redis, keys: Keys, sid: str, until: float, now: float) -> None:
    """Name the session ended for the fleet, and drop the entries whose sessions expired."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.ended_sessions, {sid: until})
        pipe.zremrangebyscore(keys.ended_sessions, "-inf", now)
        await pipe.execute()


async def read(r: Redis, keys: Keys, now: float) -> tuple[dict[str, float], float]:
    """The fleet's ended sessions that have not expired yet, the latest ENDED_SESSIONS_MAX (a
    bound on one read, far above what a fleet's operators log out of in a session's life),
    and a floor: with more in the set than that, those not read end no later than the last
    read, and every session that ends no later than it is ended (as ``EndedSessions`` does
    when full). The soonest to end were read before: the latest logouts were the ones
    missed, and a session logged out past 10,000 worked on every other gateway."""
    found: list[Any] = await r.zrevrangebyscore(
        keys.ended_sessions, "+inf", now, start=0, num=ENDED_SESSIONS_MAX + 1, withscores=True
    )
    # One more than kept: only when it is there were some not read; the floor is its end.
    floor = float(found.pop()[1]) if len(found) > ENDED_SESSIONS_MAX else 0.0
    ended: dict[str, float] = {}
    for sid, until in found:  # (member, score) pairs, withscores
        ended[sid.decode() if isinstance(sid, bytes) else str(sid)] = float(until)
    return ended, floor


async def sync(r: Redis, keys: Keys, local: EndedSessions, now: float) -> None:
    """A refresh's round: the fleet's ended sessions merged into ``local``, and those it holds
    that Redis lacks (Redis lost the set: a restart without persistence, a flush) written
    back, as the fleet's config is. Else a gateway started after the loss, which knew none of
    them, took a logged-out cookie as a session again."""
    found, floor = await read(r, keys, now)
    local.merge(now, found, floor)
    # Past the read's bound (floor > 0) Redis holds more than was read: those ending no later
    # than the floor are its, not missing, and were written back at every refresh.
    held = local.held().items()
    missing = {sid: until for sid, until in held if sid not in found and until > floor}
    if missing:
        await r.zadd(keys.ended_sessions, missing)
