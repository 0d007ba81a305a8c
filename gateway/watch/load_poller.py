"""Scrape each upstream's Prometheus /metrics for its load (queue, TTFT) on a short interval,
and a slower one while nothing is going on.

A failed scrape records nothing: the last sample ages out after ``load.max_age_s`` and the
router stops using it, rather than trusting numbers nobody has confirmed for seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from gateway.client import CLIENT_ERRORS
from gateway.config import LoadSection, Upstream
from gateway.defaults import LOAD_IDLE_POLL_FACTOR
from gateway.routing.load import SCRAPE_QUERY, LoadReading, LoadState, parse_load
from gateway.runtime import Runtime, log
from gateway.ticks import Beat

# A scrape gets two poll intervals, and at least SCRAPE_TIMEOUT_MIN_S: an edge reading a
# regional gateway's /load across an ocean (300 ms RTT, a new connection's handshake first)
# would otherwise time out at the default 0.25 s interval, and that region would go unmeasured.
# A slow scrape delays only the next round (the rounds wait for it), not the requests.
SCRAPE_TIMEOUT_MIN_S = 1.0


async def poll_once(rt: Runtime, u: Upstream, whole: set[str]) -> LoadReading | None:
    """``u``'s load, asking for only the samples read (SCRAPE_QUERY) unless ``u`` is in
    ``whole``. A server whose answer to that holds no sample at all is asked for its whole
    text at once, and when that has samples read here, from then on (``whole``):
    prometheus_client's multiprocess registry (PROMETHEUS_MULTIPROC_DIR, as model servers with
    several API processes run it) filters everything out, its collector naming no samples up
    front. A server with no samples yet (starting up) is asked both ways again next round; one
    that ignores the query (a regional gateway's /load) answers with samples, so once."""
    cfg = rt.config.load
    filtered = u.id not in whole and "?" not in (u.load_path or cfg.path)
    reading, sampled = await _scrape(rt, scrape_url(u, cfg, filtered))
    if filtered and reading is not None and not sampled:
        reading, _ = await _scrape(rt, scrape_url(u, cfg, filtered=False))
        if reading is not None and reading != LoadReading():
            whole.add(u.id)
            log.info("upstream %s: a filtered load scrape had no sample; scraping it whole", u.id)
    return reading


async def _scrape(rt: Runtime, url: str) -> tuple[LoadReading | None, bool]:
    """The reading (None: the scrape failed), and whether the text held any sample at all."""
    cfg = rt.config.load
    try:
        async with asyncio.timeout(scrape_timeout_s(cfg)):
            resp = await rt.http().request("GET", url)
            body = await resp.read()
        if resp.status != 200:
            return None, False
        text = body.decode()
    except (TimeoutError, *CLIENT_ERRORS, UnicodeDecodeError):
        return None, False
    try:
        reading = parse_load(text)
    except ValueError:
        return None, False  # not Prometheus text: a backend without metrics is unmeasured
    return reading, any(line and line[0] != "#" for line in text.splitlines())


def scrape_url(u: Upstream, cfg: LoadSection, filtered: bool = True) -> str:
    """The upstream's load path, asking for only the samples read (SCRAPE_QUERY) where
    ``filtered``, unless the configured path has a query of its own."""
    path = u.load_path or cfg.path
    return u.url.rstrip("/") + path + ("" if "?" in path or not filtered else "?" + SCRAPE_QUERY)


async def poll_all(
    rt: Runtime, ups: tuple[Upstream, ...], whole: set[str]
) -> list[LoadReading | None]:
    if len(ups) == 1:  # in this task: no task and gather to build four times a second
        return [await poll_once(rt, ups[0], whole)]
    return await asyncio.gather(*(poll_once(rt, u, whole) for u in ups))


def scrape_timeout_s(cfg: LoadSection) -> float:
    return max(2 * cfg.poll_interval_s, SCRAPE_TIMEOUT_MIN_S)


def next_round_s(
    cfg: LoadSection,
    readings: Sequence[LoadReading | None],
    before: Sequence[LoadState | None],
    in_flight: Mapping[str, int],
    busy: bool,
) -> float:
    """How long after a round's start the next one starts: ``load.poll_interval_s`` while
    anything is going on, LOAD_IDLE_POLL_FACTOR times that while nothing is. Nothing is going
    on when every upstream answered with an empty queue and nothing running, and no request
    finished there since its sample ``before`` this round (the store's; its TTFT count did
    not move: short requests from other gateways leave the gauges at 0 between scrapes),
    none has a request of this worker in flight, and this worker proxied none over the round
    (else ``busy``). A scrape that failed, or a reading without queue figures (a regional
    gateway's /load) or without a TTFT count (a server that exports none: requests could come
    and go unseen), counts as something going on. The idle wait is at most half of
    ``load.max_age_s`` and leaves a scrape's timeout before the last sample expires (a sample
    is refreshed before it expires unless a scrape times out), and never shorter than the
    configured interval."""
    fast = cfg.poll_interval_s
    if busy or any(in_flight.values()):
        return fast
    for r, b in zip(readings, before, strict=True):
        # != 0 holds for None too: a figure the reading lacks is not known to be idle.
        if r is None or r.queue_depth != 0 or r.running != 0:
            return fast
        if b is None or r.ttft_count is None or r.ttft_count != b.ttft_count:
            return fast
    slow = min(
        LOAD_IDLE_POLL_FACTOR * fast, cfg.max_age_s / 2, cfg.max_age_s - scrape_timeout_s(cfg)
    )
    return max(fast, slow)


def scraped(rt: Runtime) -> tuple[Upstream, ...]:
    """The upstreams a round scrapes: those the probes do not hold down, and the down ones of
    a model in panic (fewer of its undrained upstreams up than router.panic_threshold, when
    the router tries the down ones too: probes that time out under overload, whose queues
    the score then still needs). A down one's failed scrape kept every round at the fast
    interval: four TLS handshakes a second to an upstream whose certificate was refused,
    against the probe's one every interval. Its sample expires (load.max_age_s); the round
    after its probe answers scrapes it again."""
    every = rt.store.upstreams()
    up = {u.id for u in every if rt.store.health(u.id).probe_ok()}
    if len(up) == len(every):
        return every
    threshold, wanted = rt.config.router.panic_threshold, set(up)
    for model in {m for u in every for m in u.models}:
        pool = [u.id for u in every if model in u.models and not u.drained]
        if sum(uid in up for uid in pool) < threshold * len(pool):
            wanted.update(pool)
    return tuple(u for u in every if u.id in wanted)


async def load_loop(rt: Runtime) -> None:
    """A round every poll interval (slower while idle: ``next_round_s``), or when the slowest
    scrape of the last one is done; on the worker's tick where the interval allows
    (gateway.ticks)."""
    loop = asyncio.get_running_loop()
    proxied = rt.proxied
    beat = Beat(loop.time())  # on the worker's tick (gateway.ticks), with the background work
    whole: set[str] = set()  # upstreams scraped whole (poll_once)
    while rt.config.load.enabled:
        ups = scraped(rt)
        readings = await poll_all(rt, ups, whole)
        before = [rt.store.load(u.id) for u in ups]  # each upstream's sample, until now
        rt.store.record_loads(
            {u.id: r for u, r in zip(ups, readings, strict=True) if r is not None},
            time.monotonic(),
        )
        busy = rt.proxied != proxied
        wait = next_round_s(rt.config.load, readings, before, rt.store.in_flight(), busy)
        proxied = rt.proxied
        await asyncio.sleep(beat.wait(loop.time(), wait))
