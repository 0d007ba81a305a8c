"""The dashboard in a real browser: Debian's chromium driven by Playwright (its own browser
download is never used), against a real gateway with three sim-backends, Redis, and clients
in five cities. The tests run in order, as one operator's session: log in and see every
region; a backend dies and turns red; drain a region's upstream from the page; a fleet
document the gateway refuses; Redis goes away.

Screenshots go to tests/results/dashboard/ (not committed): look at them after a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.cli.demo import CITIES, City
from gateway.cli.procs import kill, regions_toml
from gateway.fleet.keys import Keys
from geodb.build import build_from_rows
from tests.support import (
    REGIONS,
    Gateway,
    RedisServer,
    Sim,
    eventually,
    start_gateway,
    start_redis,
    start_sim,
)

CHROMIUM = Path("/usr/bin/chromium")
# As /work's machine notes say Chromium runs here: no sandbox as root, no GPU, and none of the
# background calls home that a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULTS = Path(__file__).resolve().parents[3] / "results" / "dashboard"
TOKEN = "alice-dashboard-test-token-7f3a"
HEALTH_INTERVAL_S = 1.0
REDRAW_SLACK_S = 2.0  # the push and the redraw after the down verdict, on a loaded machine
MODEL = "m"
PARKED = "parked-model"
SIMS = (("eu-1", "eu-central"), ("us-1", "us-east"), ("ap-1", "ap-southeast"))
LONDON = next(c for c in CITIES if c.name == "London")


def _need(ok: bool, what: str) -> None:
    """Missing here: skipped on a developer's machine, a failure in CI (scripts/dev test
    installs both)."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI")
        pytest.skip(f"{what} is missing: scripts/dev test installs it")


@dataclass
class World:
    gw: Gateway
    sims: dict[str, Sim]
    redis: RedisServer
    stop: threading.Event = field(default_factory=threading.Event)


def _toml(port: int, db: Path, redis_url: str, sims: dict[str, Sim]) -> str:
    lines = [
        "[gateway]",
        'region = "eu-central"',
        'origin = "client"',
        "[server]",
        f"port = {port}",
        "access_log = false",
        "[health]",
        f"interval_s = {HEALTH_INTERVAL_S}",
        "timeout_s = 0.5",
        "unhealthy_threshold = 1",
        "healthy_threshold = 1",
        "[geoip]",
        f'database = "{db}"',
        "[redis]",
        f'url = "{redis_url}"',
        'deployment = "dashboard-test"',
        'gateway_id = "gw-frankfurt"',
        "restart_grace_s = 0",  # its drains come within seconds of the test's Redis start
        "[admin]",
        f'tokens = {{ alice = "{TOKEN}" }}',
        regions_toml(*REGIONS),
    ]
    for name, sim in sims.items():
        lines += [
            "[[upstreams]]",
            f'id = "{name}"',
            f'region = "{sim.region}"',
            f'url = "{sim.url}"',
            f'models = ["{MODEL}"]',
        ]
    # A model whose only upstream is drained: its requests are refused before any region is
    # chosen (503, region "-"), what the page's "not routed" card is for.
    eu = next(sim for sim in sims.values() if sim.region == "eu-central")
    lines += ["[[upstreams]]", 'id = "parked"', 'region = "eu-central"', f'url = "{eu.url}"']
    lines += [f'models = ["{PARKED}"]', "drained = true"]
    return "\n".join(lines) + "\n"


def _ask(gw: Gateway, city: City, stream: bool = True) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=city.addr)
    body = {
        "model": MODEL,
        "max_tokens": 4,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.Client(transport=transport, timeout=10) as c:
        return c.post(f"{gw.url}/v1/chat/completions", json=body)


def _clients(world: World) -> None:
    """Each city asks twice a second (streams: the page shows their first-token times), for
    three minutes at most."""
    end = time.monotonic() + 180
    while not world.stop.is_set() and time.monotonic() < end:
        for city in CITIES:
            with contextlib.suppress(httpx.HTTPError):  # one during a kill may fail
                _ask(world.gw, city)
        world.stop.wait(0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dashboard")
    db = tmp / "cities.mmdb"
    rows = [
        (c.name, [f"{c.addr}/32", c.country, c.continent, str(c.lat), str(c.lon), c.name])
        for c in CITIES
    ]
    build_from_rows(rows, db)
    redis = start_redis(tmp)
    sims: dict[str, Sim] = {}
    gw = None
    try:
        for name, region in SIMS:
            knobs = ("--ttft-ms", "15", "--tokens-per-s", "400")
            sims[name] = start_sim(tmp, name, region, [MODEL], *knobs)
        gw = start_gateway(tmp, lambda p: _toml(p, db, redis.url, sims))
        w = World(gw, sims, redis)
        traffic = threading.Thread(target=_clients, args=(w,), daemon=True)
        traffic.start()
        yield w
        w.stop.set()
        traffic.join(15)
    finally:
        if gw is not None:
            gw.stop()
        for sim in sims.values():
            sim.proc.kill()
        redis.stop()


@dataclass
class Browser:
    page: Any
    errors: list[str]
    urls: list[str]


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Browser]:
    _need(CHROMIUM.exists(), "Debian's chromium (/usr/bin/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright (pip)")
        raise
    RESULTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = chromium.new_page(viewport={"width": 1440, "height": 1000})
        b = Browser(page, [], [])
        page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: b.errors.append(str(e)))
        page.on("request", lambda r: b.urls.append(r.url))
        try:
            yield b
        finally:
            chromium.close()


def _shot(b: Browser, name: str, full: bool = False) -> None:
    b.page.screenshot(path=str(RESULTS / name), full_page=full)


def _note(**facts: object) -> None:
    """What the run saw, for the report: printed (pytest -s) and kept beside the screenshots."""
    print(json.dumps(facts))
    with (RESULTS / "run.jsonl").open("a") as f:
        f.write(json.dumps(facts) + "\n")


def test_log_in_and_see_every_region(world: World, browser: Browser) -> None:
    page = browser.page
    page.goto(f"{world.gw.ops_url}/dashboard")
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#who:has-text('operator: alice')")
    for region in REGIONS:
        page.wait_for_selector(f".region-card[data-region='{region}']")
        page.wait_for_selector(f"#map [data-region='{region}']", state="attached")
    # Traffic has arrived: places on the map, a first-token time in the table.
    page.wait_for_selector("#map circle.place", state="attached", timeout=10_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#upstreams tbody tr')].some("
        "r => /\\d+ \\/ \\d+ ms/.test(r.textContent))",
        timeout=10_000,
    )
    states = page.eval_on_selector_all(
        ".region-card", "cards => cards.map(c => [c.dataset.region, c.dataset.state])"
    )
    assert dict(states) == {
        "eu-central": "healthy",
        "us-east": "healthy",
        "ap-southeast": "healthy",
        "sa-east": "empty",
    }
    page.wait_for_timeout(3000)  # a few seconds of sparklines and charts for the screenshot
    _shot(browser, "dashboard.png", full=True)
    _note(step="login", regions=dict(states))


def test_routing_explained_for_a_country_and_an_ip(world: World, browser: Browser) -> None:
    page = browser.page
    for where, routed in (("SG", "Routed to ap-1"), (LONDON.addr, "Routed to eu-1")):
        page.fill("#explain-where", where)
        page.click("#explain button[type=submit]")
        page.wait_for_selector(f"#explain-out:has-text('{routed}')")
        _note(step=f"explain {where}", said=page.inner_text("#explain-out p:nth-child(2)"))
    assert "London, GB" in page.inner_text("#explain-out")
    page.locator("#explain-out").scroll_into_view_if_needed()
    _shot(browser, "explain.png")


def test_killing_a_backend_turns_it_red_within_two_health_intervals(
    world: World, browser: Browser
) -> None:
    page = browser.page
    t0 = time.monotonic()
    kill(world.sims["us-1"].proc)

    def down() -> bool:
        table = httpx.get(f"{world.gw.ops_url}/routing-table").json()
        return not next(u for r in table["regions"] for u in r["upstreams"] if u["id"] == "us-1")[
            "healthy"
        ]

    eventually(down, timeout=10, what="the gateway's down verdict on us-1")
    verdict_s = time.monotonic() - t0
    # Polled to the red badge itself: the card's state changes as the page redraws it, and a
    # badge read at that moment could be the node being replaced (a detached node's colour
    # reads '').
    badge = ".region-card[data-region='us-east'][data-state='down'] .badge"
    red = "rgb(240, 62, 62)"
    page.wait_for_function(
        "([sel, red]) => { const e = document.querySelector(sel);"
        " const r = document.querySelector(\"tr[data-upstream='us-1']\");"
        " return e !== null && getComputedStyle(e).backgroundColor === red"
        " && r !== null && r.dataset.state === 'down'; }",
        arg=[badge, red],
        timeout=10_000,
    )
    seen_after_s = time.monotonic() - t0
    colour = page.eval_on_selector(badge, "e => getComputedStyle(e).backgroundColor")
    row = page.eval_on_selector("tr[data-upstream='us-1']", "r => r.dataset.state")
    _shot(browser, "backend-down.png")
    _note(
        step="kill us-1",
        down_after_s=round(verdict_s, 2),
        red_after_s=round(seen_after_s, 2),
        colour=colour,
        row=row,
    )
    # The verdict within two probe periods (a killed backend refuses the next probe); then the
    # sampler's push (checked ten times a second) and chromium's redraw, which on a loaded
    # machine take up to a second or two.
    assert verdict_s <= 2 * HEALTH_INTERVAL_S
    assert seen_after_s - verdict_s <= REDRAW_SLACK_S
    assert colour == red and row == "down"


def test_drain_from_the_page_moves_traffic_and_audits_the_operator(
    world: World, browser: Browser
) -> None:
    page = browser.page
    page.click("tr[data-upstream='eu-1'] button[data-action='drain']")
    page.wait_for_selector("#confirm[open]")
    page.wait_for_function(
        "() => document.getElementById('confirm-text').textContent.includes('carries')"
    )
    said = page.inner_text("#confirm-text")
    _shot(browser, "drain-confirm.png")
    _note(step="drain eu-1: confirmation", text=said)
    assert said.startswith("eu-1 carries ") and "% of requests in the last minute" in said
    # us-east is down: London, and New York and São Paulo, which eu-1 took over, go to ap-1.
    assert "will move" in said and "to ap-1 (100 %)" in said
    page.click("#confirm-ok")
    page.wait_for_selector("tr[data-upstream='eu-1'][data-state='drained']")
    served = {_ask(world.gw, LONDON, stream=False).headers["geogate-route"] for _ in range(5)}
    assert not any("upstream=eu-1" in s for s in served), served
    page.wait_for_selector("#audit tr[data-who='alice']:has-text('upstream eu-1')")
    audit = page.inner_text("#audit tbody tr:first-child")
    _shot(browser, "drained.png")
    # The whole page, small, for README (docs/dashboard.png is a copy of one such run).
    page.evaluate("document.getElementById('toast').hidden = true")
    page.set_viewport_size({"width": 1200, "height": 820})
    page.evaluate("document.body.style.zoom = '0.6'; window.scrollTo(0, 0)")
    page.wait_for_timeout(300)  # the charts follow the new width
    _shot(browser, "readme.png")
    page.evaluate("document.body.style.zoom = ''")
    page.set_viewport_size({"width": 1440, "height": 1000})
    _note(step="drain eu-1: done", london_now=sorted(served), audit=audit)


def test_an_empty_weight_is_refused_in_the_page(world: World, browser: Browser) -> None:
    """Number("") is 0: clearing the field and pressing Apply made the upstream a standby."""
    page = browser.page
    page.click("tr[data-upstream='ap-1'] button[data-action='weight']")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-value", "")
    page.click("#confirm-ok")
    page.wait_for_function(
        "() => document.getElementById('confirm-error').textContent"
        ".includes('give the new weight as a number')"
    )
    assert page.is_visible("#confirm[open]")  # not applied: the dialog stays
    page.click("#confirm-cancel")
    table = httpx.get(f"{world.gw.ops_url}/routing-table").json()
    ap = next(u for r in table["regions"] for u in r["upstreams"] if u["id"] == "ap-1")
    assert ap["weight"] == 1.0


def test_a_fleet_document_the_gateway_refuses_shows_a_banner(
    world: World, browser: Browser
) -> None:
    """A hand edit in Redis the gateway refuses (a weight of -5): /readyz said "degraded:
    ignoring the fleet config in Redis" while the page said "shared state: fresh"."""
    page = browser.page
    keys = Keys("dashboard-test")
    client = Redis.from_url(world.redis.url, decode_responses=True)
    try:
        good: Any = client.hgetall(keys.config)  # redis-py types the hash loosely
        doc = json.loads(good["doc"])
        doc["upstreams"][0]["weight"] = -5
        bad = int(good["version"]) + 1
        client.hset(keys.config, mapping={"doc": json.dumps(doc), "version": bad})
        client.publish(keys.events, str(bad))
        page.wait_for_selector("#shared:has-text('fleet config refused')", timeout=10_000)
        page.wait_for_selector("#stale:has-text('Ignoring the fleet config in Redis')")
        banner = page.inner_text("#stale")
        _shot(browser, "fleet-config-refused.png")
        _note(step="fleet config refused", banner=banner)
        assert f"version {bad}: invalid fleet config" in banner
        assert f"routes on config v{bad - 1}" in banner
        client.hset(keys.config, mapping={**good, "version": bad + 1})  # one it can read
        client.publish(keys.events, str(bad + 1))
        page.wait_for_selector("#shared:has-text('shared state: fresh')", timeout=10_000)
        assert not page.is_visible("#stale")
    finally:
        client.close()


def test_redis_away_says_shared_state_stale_and_stays_live(world: World, browser: Browser) -> None:
    page = browser.page
    world.redis.stop()
    page.wait_for_selector("#stale:has-text('Shared state stale since')", timeout=10_000)
    before = page.inner_text("#updated")
    page.wait_for_function(
        f"() => document.getElementById('updated').textContent !== {json.dumps(before)}",
        timeout=5_000,
    )
    banner = page.inner_text("#stale")
    _shot(browser, "redis-away.png")
    _note(step="redis away", banner=banner)


def test_requests_no_region_took_show_as_refused(world: World, browser: Browser) -> None:
    # Refused before routing (a model whose upstreams are all drained; a drained region's
    # clients alike): in no region's card, so the page showed nothing failing.
    page = browser.page
    transport = httpx.HTTPTransport(local_address=LONDON.addr)
    with httpx.Client(transport=transport, timeout=10) as c:
        for _ in range(5):
            body = {"model": PARKED, "messages": [{"role": "user", "content": "hi"}]}
            assert c.post(f"{world.gw.url}/v1/chat/completions", json=body).status_code == 503
    page.wait_for_selector(".region-card[data-region='-'][data-state='down']", timeout=10_000)
    page.wait_for_selector("#map circle.place.refused", state="attached", timeout=10_000)
    card = page.inner_text(".region-card[data-region='-']")
    _note(step="not routed", card=card)
    assert "req/s refused (5xx) before any region was chosen" in card


def test_no_console_errors_and_no_token_in_any_url(browser: Browser) -> None:
    _note(step="end", console_errors=browser.errors, requests=len(browser.urls))
    assert browser.errors == []
    assert not [u for u in browser.urls if TOKEN in u]
    assert all(u.startswith(("http://127.0.0.1", "data:")) for u in browser.urls)  # offline
