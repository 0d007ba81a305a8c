"""Active health probes: each upstream's health URL on an interval, with jitter; and, when
``health.completion_probe`` is on, a tiny completion to each upstream ejected for failed
requests, the one probe that ends an ejection early.

Probes go through the proxy's own connection pool, so they also keep one connection to each
upstream warm: the first real request after a quiet spell pays no handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time

from gateway.client import CLIENT_ERRORS, classify
from gateway.config import Upstream
from gateway.logs import event
from gateway.runtime import Runtime
from gateway.watch import ejections

log = logging.getLogger("geogate.health")


async def probe_once(rt: Runtime, u: Upstream) -> None:
    cfg = rt.config.health
    url = u.url.rstrip("/") + u.health_path
    t0 = time.perf_counter()
    ok, error = False, None
    try:
        async with asyncio.timeout(cfg.timeout_s):
            resp = await rt.http().request("GET", url)
            await resp.read()
            ok = 200 <= resp.status < 300
            error = None if ok else f"HTTP {resp.status}"
    except (TimeoutError, *CLIENT_ERRORS) as exc:
        error = classify(exc, f"no answer in {cfg.timeout_s:g} s")[1]
    rtt_ms = (time.perf_counter() - t0) * 1000 if ok else None
    # The probe's own verdict; ejections are told apart (watch.ejections), once each.
    # probe_ok: one added at run time is not in rotation before its first good probe, so
    # that probe is a change worth a line (it joins), and a first failure is not.
    before = rt.store.health(u.id).probe_ok()
    rt.store.record_probe(u.id, ok, rtt_ms, error)
    h = rt.store.health(u.id)
    after = h.probe_ok()
    if before != after:
        # A recovery is news, not a warning: ejections' "back in rotation" is INFO too, and
        # a log alert on WARNING paged for every upstream that came back.
        log.log(
            logging.WARNING if not after else logging.INFO,
            "upstream %s (%s) is now %s%s",
            u.id,
            u.region,
            "healthy" if after else "unhealthy",
            f": {error}" if error else "",
            extra=event(
                "upstream-healthy" if after else "upstream-unhealthy",
                reason=error,
                upstream=u.id,
                region=u.region,
            ),
        )
    now = time.monotonic()
    if not ejections.check_return(rt, u.id, u.region, now):  # a return sets it itself
        ejections.set_gauge(rt, u.id, u.region, now)  # the probe may have changed health
    if h.rtt_ms is not None:
        rt.metrics.rtt.labels(u.id, u.region).set(h.rtt_ms)


async def completion_probe(rt: Runtime, u: Upstream) -> None:
    """/health can answer while completions fail (a GPU out of memory): only a completion
    that succeeds ends an ejection early."""
    if await completion_ok(rt, u):
        ejections.end_by_probe(rt, u.id, u.region, time.monotonic())


async def completion_ok(rt: Runtime, u: Upstream) -> bool:
    """A tiny completion (health.completion_probe_*) of the upstream's first model."""
    cfg = rt.config.health
    body: dict[str, object] = {"model": u.models[0], "max_tokens": cfg.completion_probe_max_tokens}
    if cfg.completion_probe_path.rstrip("/").endswith("/chat/completions"):
        body["messages"] = [{"role": "user", "content": "ping"}]
    else:
        body["prompt"] = "ping"
    url = u.url.rstrip("/") + cfg.completion_probe_path
    try:
        async with asyncio.timeout(cfg.completion_probe_timeout_s):
            resp = await rt.http().request(
                "POST", url, [(b"Content-Type", b"application/json")], json.dumps(body).encode()
            )
            await resp.read()
            ok = 200 <= resp.status < 300
            error = None if ok else f"HTTP {resp.status}"
    except (TimeoutError, *CLIENT_ERRORS) as exc:
        ok, error = False, classify(exc, f"no answer in {cfg.completion_probe_timeout_s:g} s")[1]
    if error:
        log.debug("completion probe of ejected upstream %s failed: %s", u.id, error)
    return ok


async def probe_all(rt: Runtime) -> None:
    await asyncio.gather(*(probe_once(rt, u) for u in rt.store.upstreams()))


async def probe_loop(rt: Runtime, rng: random.Random) -> None:
    """Probe every current upstream each interval: the set can change at run time (fleet
    config, DNS discovery), so it is read afresh each round. Each probe starts at its own
    jittered offset within the round so a fleet's probes do not arrive together.

    Completion probes of ejected upstreams run beside the rounds, at most one per upstream at
    a time: one can take seconds, and must not hold up the other upstreams' probes.

    An upstream that appears during a round is probed at once (_probe_joining): it takes no
    traffic before its first probe answers, and should not wait for the next round."""
    deep: dict[str, asyncio.Task[None]] = {}
    loop = asyncio.get_running_loop()
    try:
        while True:
            cfg = rt.config.health
            interval = cfg.interval_s * (1 + cfg.jitter * (2 * rng.random() - 1))
            rt.store.joined.clear()  # those there now are this round's to probe
            ups = rt.store.upstreams()
            if cfg.completion_probe:
                _start_completion_probes(rt, ups, deep)
            await asyncio.gather(
                *(_probe_after(rt, u, rng.random() * cfg.jitter * interval) for u in ups),
                _probe_joining(rt, loop.time() + interval),
            )
    finally:
        for task in deep.values():
            task.cancel()


async def _probe_joining(rt: Runtime, until: float) -> None:
    """Until ``until`` (the round's end), probe each upstream that appears meanwhile (a DNS
    member, a fleet config change) at once, rather than up to a round later: it takes no
    traffic before a probe has seen it answer. Woken by the store (``joined``, set by
    replace_config when an id is new), not by polling: a steady pool costs nothing. Probed:
    those no probe has answered yet (one that left and came back has a fresh health)."""
    joining: dict[str, asyncio.Task[None]] = {}
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                while True:
                    await rt.store.joined.wait()
                    rt.store.joined.clear()
                    for u in rt.store.upstreams():
                        fresh = rt.store.health(u.id).probed_healthy is None
                        if fresh and (u.id not in joining or joining[u.id].done()):
                            joining[u.id] = asyncio.create_task(probe_once(rt, u))
        await asyncio.gather(*joining.values())  # each bounded by health.timeout_s
    finally:
        for task in joining.values():
            task.cancel()


def _start_completion_probes(
    rt: Runtime, ups: tuple[Upstream, ...], deep: dict[str, asyncio.Task[None]]
) -> None:
    now = time.monotonic()
    for uid in [uid for uid, task in deep.items() if task.done()]:
        del deep[uid]
    for u in ups:
        h = rt.store.health(u.id)
        # Ejected here: one taken from a sibling worker (no cause) is that worker's to probe,
        # and ends here when it ends there (fleet.redis_store).
        if u.id not in deep and h.ejected(now) and h.ejection_cause is not None:
            deep[u.id] = asyncio.create_task(completion_probe(rt, u))


async def _probe_after(rt: Runtime, u: Upstream, delay: float) -> None:
    await asyncio.sleep(delay)
    await probe_once(rt, u)
