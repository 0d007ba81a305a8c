// The routing table when a region's gateway stops answering: its region must not stay healthy
// on another gateway's view, the isolate's last-known table or the fallback. The Worker in
// workerd against gateways played on loopback, and src/table.js's cache on its own (in Node,
// with a clock the test moves).
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import * as tables from "../src/table.js";
import { CITIES, closedUrl, fakeGateway, routeFields, startWorker } from "./support/harness.js";

// Named in src/table.js; the defaults are for a run against a table.js that lacks them.
const MISSES = tables.MAX_OWN_MISSES ?? 2;
const MAX_AGE_MS = tables.MAX_LAST_KNOWN_AGE_MS ?? 5 * 60_000;

const started = [];
after(async () => {
  await Promise.all(started.map((x) => ("dispose" in x ? x.dispose() : x.close())));
});

/**
 * A regional gateway on loopback: `/routing-table` answers `doc()` (with the region as
 * self_region), `/v1/*` answers 200 naming the region; `dead` makes it answer 503 to both.
 */
async function gateway(self, doc) {
  const g = {
    dead: false,
    tableReads: 0,
    url: "",
    requests: [],
    close: async () => {},
  };
  const fake = await fakeGateway((req) => {
    if (req.path === "/routing-table") g.tableReads++;
    if (g.dead) return { status: 503, body: { error: { message: "down" } } };
    if (req.path === "/routing-table") return { body: { self_region: self, ...doc() } };
    return { body: { region: self } };
  });
  Object.assign(g, { url: fake.url, requests: fake.requests, close: fake.close });
  started.push(g);
  return g;
}

const region = (id, latitude, longitude, url, upstreams) => ({
  id,
  latitude,
  longitude,
  url,
  upstreams,
});
const up = (id, extra = {}) => ({ id, models: ["m"], ...extra });

/** eu-central's and us-east's gateways, each listing both regions, with these gateway URLs. */
async function twoGateways(euUrl, usUrl) {
  const doc = () => ({
    regions: [
      region("eu-central", 50.11, 8.68, euUrl, [up("eu-central-1")]),
      region("us-east", 37.37, -79.82, usUrl, [up("us-east-1")]),
    ],
  });
  return { eu: await gateway("eu-central", doc), us: await gateway("us-east", doc) };
}

test("a region whose own table stops answering is not first after MAX_OWN_MISSES", async () => {
  // Both gateways list both regions' backends as healthy (each probes them all, as the
  // gateway does for spill-over): us-east's entry can come from eu-central's view.
  const gw = {};
  const doc = () => ({
    regions: [
      region("eu-central", 50.11, 8.68, gw.eu.url, [up("eu-central-1")]),
      region("us-east", 37.37, -79.82, gw.us.url, [up("us-east-1")]),
    ],
  });
  gw.eu = await gateway("eu-central", doc);
  gw.us = await gateway("us-east", doc);
  const mf = await startWorker({
    ROUTING_TABLE_URLS: [`${gw.eu.url}/routing-table`, `${gw.us.url}/routing-table`],
    TABLE_TTL_S: 0.05,
  });
  started.push(mf);
  const send = async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/completions", {
      method: "POST",
      body: JSON.stringify({ model: "m", prompt: "hi" }),
      cf: CITIES["New York"],
    });
    const body = await resp.json();
    const route = routeFields(resp.headers.get("geogate-route"));
    return { status: resp.status, served: body.region, ...route };
  };
  const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
  /** Send until `done(result)`, for at most 10 s; every result. */
  const until = async (done) => {
    const results = [];
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      results.push(await send());
      if (done(results.at(-1))) break;
      await pause();
    }
    return results;
  };

  const first = await send();
  assert.deepEqual([first.region, first.reason], ["us-east", "lowest-score"]);

  gw.us.dead = true;
  const readsBefore = gw.us.tableReads;
  let missed = 0;
  const moved = await until((r) => {
    missed = gw.us.tableReads - readsBefore;
    return r.region === "eu-central" && r.reason !== "failover";
  });
  const last = moved.at(-1);
  assert.deepEqual(
    [last.region, last.reason],
    ["eu-central", "lowest-score"],
    `us-east is still tried first: ${JSON.stringify(moved.slice(-3))}`,
  );
  // Not on one lost read: only once us-east's own table missed MAX_OWN_MISSES in a row.
  assert.ok(missed >= MISSES, `moved after ${missed} missed read(s)`);
  // Meanwhile its clients failed over: none saw an error.
  assert.deepEqual(moved.filter((r) => r.status !== 200), []);

  // Its own table answers again: back at once (it is the authority on its region).
  gw.us.dead = false;
  const back = await until((r) => r.region === "us-east" && r.reason === "lowest-score");
  assert.equal(back.at(-1).served, "us-east");
});

test("a gateway dead from the start, on an ops host of its own: down by region name", async () => {
  // wrangler.jsonc's layout: each region's ops listener has a host of its own
  // (ops.eu-central.api... vs eu-central.api...), so the host rule cannot tell which region a
  // source that never answered is for; ROUTING_TABLE_URLS names it. us-east's gateway shows
  // eu-central's backends healthy (it probes them), eu-central's gateway is dead.
  const euUrl = (await closedUrl()).replace("127.0.0.1", "127.0.0.2");
  const euOps = `${await closedUrl()}/routing-table`;
  const us = await gateway("us-east", () => ({
    regions: [
      region("eu-central", 50.11, 8.68, euUrl, [up("eu-central-1")]),
      region("us-east", 37.37, -79.82, us.url, [up("us-east-1")]),
    ],
  }));
  const mf = await startWorker({
    ROUTING_TABLE_URLS: { "us-east": `${us.url}/routing-table`, "eu-central": euOps },
    TABLE_TTL_S: 0.05,
  });
  started.push(mf);
  const seen = [];
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/completions", {
      method: "POST",
      body: JSON.stringify({ model: "m", prompt: "hi" }),
      cf: CITIES.London,
    });
    assert.equal(resp.status, 200);
    await resp.arrayBuffer();
    const { region: r, reason } = routeFields(resp.headers.get("geogate-route"));
    seen.push(`${r}/${reason}`);
    if (seen.at(-1) === "us-east/lowest-score") break;
    await new Promise((resolve) => setTimeout(resolve, 60));
  }
  // First tried eu-central and failed over; once its source missed MAX_OWN_MISSES reads,
  // London goes to us-east directly.
  assert.equal(seen[0], "us-east/failover");
  assert.equal(seen.at(-1), "us-east/lowest-score", seen.join(" "));
});

describe("the cache on its own", () => {
  /** A cache on a clock the test moves, and settings for `sources`. */
  function cacheOn(sources, fallback = null) {
    const clock = { t: 1_000_000 };
    const cache = new tables.TableCache(() => clock.t);
    const s = {
      sources: sources.map((g) => `${g.url}/routing-table`),
      token: "",
      ttlMs: 10_000,
      timeoutMs: 2_000,
      fallback: fallback === null ? null : tables.normalizeTable(fallback),
    };
    return { clock, cache, s };
  }
  const upsOf = (table, id) => table.upstreams.filter((u) => u.region === id);

  test("last known: down after MAX_OWN_MISSES, gone after MAX_LAST_KNOWN_AGE_MS", async () => {
    // No shared state: each gateway lists only its own region's backends.
    const gw = {};
    const only = (self) => () => {
      const eu = self === "eu-central" ? [up("eu-central-1")] : [];
      const us = self === "us-east" ? [up("us-east-1", { ttft_ms: 80 })] : [];
      return {
        regions: [
          region("eu-central", 50.11, 8.68, gw.eu.url, eu),
          region("us-east", 37.37, -79.82, gw.us.url, us),
        ],
      };
    };
    gw.eu = await gateway("eu-central", only("eu-central"));
    gw.us = await gateway("us-east", only("us-east"));
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    await cache.refresh(s);
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);

    gw.us.dead = true;
    for (let i = 1; i < MISSES; i++) {
      clock.t += s.ttlMs;
      await cache.refresh(s);
      // One lost read: the last-known entry, as it was.
      const seen = upsOf(cache.table, "us-east").map((u) => [u.healthy, u.ttft_ms]);
      assert.deepEqual(seen, [[true, 80]]);
    }
    clock.t += s.ttlMs;
    await cache.refresh(s);
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [false]);

    clock.t += MAX_AGE_MS;
    await cache.refresh(s);
    assert.deepEqual(upsOf(cache.table, "us-east"), [], "a frozen entry kept past its age");
    assert.equal(cache.state, "fresh");
    assert.deepEqual(upsOf(cache.table, "eu-central").map((u) => u.healthy), [true]);
  });

  test("a gateway dead since the isolate began: its region down after MAX_OWN_MISSES", async () => {
    // eu-central probes us-east's backends and shows them healthy; us-east's gateway never
    // answers, so its source was never heard from.
    // Its source is known for us-east's by its host name, the one in us-east's gateway URL.
    const gw = await twoGateways("http://eu.example", "http://localhost");
    gw.us.dead = true;
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    s.sources[1] = s.sources[1].replace("127.0.0.1", "localhost");
    const health = () => upsOf(cache.table, "us-east").map((u) => u.healthy);
    for (let i = 1; i < MISSES; i++) {
      await cache.refresh(s);
      assert.deepEqual(health(), [true], `after ${i} miss(es)`);
      clock.t += s.ttlMs;
    }
    await cache.refresh(s);
    assert.deepEqual(health(), [false]);
  });

  test("refreshes at the same time count one miss between them", async () => {
    // A cold isolate's requests each refresh (none can await another's): three at once with
    // us-east's table lost once marked us-east down at once, not after MAX_OWN_MISSES.
    const gw = await twoGateways("http://eu.example", "http://us.example");
    gw.us.dead = true;
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    s.regionOf = new Map([[s.sources[1], "us-east"]]);
    const health = () => upsOf(cache.table, "us-east").map((u) => u.healthy);
    await Promise.all([cache.refresh(s), cache.refresh(s), cache.refresh(s)]);
    assert.equal(cache.seen.misses.get("us-east"), 1);
    for (let i = 2; i <= MISSES; i++) {
      assert.deepEqual(health(), [true], `after ${i - 1} miss(es)`);
      clock.t += s.ttlMs;
      await cache.refresh(s);
    }
    assert.deepEqual(health(), [false]);
  });

  test("a source never heard from counts against the region ROUTING_TABLE_URLS names", async () => {
    // As the test above, on the cache alone: the dead source's host is no region URL's host.
    const gw = await twoGateways("http://eu.example", "http://us.example");
    gw.us.dead = true;
    const health = () => upsOf(cache.table, "us-east").map((u) => u.healthy);
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    for (let i = 0; i <= MISSES; i++) {
      await cache.refresh(s);
      clock.t += s.ttlMs;
    }
    assert.deepEqual(health(), [true], "a plain list: its host says nothing");

    const named = cacheOn([gw.eu, gw.us]);
    named.s.regionOf = new Map([[named.s.sources[1], "us-east"]]);
    for (let i = 1; i < MISSES; i++) {
      await named.cache.refresh(named.s);
      assert.deepEqual(upsOf(named.cache.table, "us-east").map((u) => u.healthy), [true]);
      named.clock.t += named.s.ttlMs;
    }
    await named.cache.refresh(named.s);
    assert.deepEqual(upsOf(named.cache.table, "us-east").map((u) => u.healthy), [false]);
  });

  test("a region named that no table has: warned of once, and the host rule used", async (t) => {
    // "eu-centrla" for eu-central: counted against it, the dead gateway's misses marked no
    // region down. Its host is eu-central's gateway's host, so that rule finds the region.
    const warn = t.mock.method(console, "warn", () => {});
    const gw = await twoGateways("http://localhost:8443", "http://us.example");
    gw.eu.dead = true;
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    s.sources[0] = s.sources[0].replace("127.0.0.1", "localhost");
    s.regionOf = new Map([[s.sources[0], "eu-centrla"]]);
    for (let i = 1; i <= MISSES; i++) {
      await cache.refresh(s);
      const want = i < MISSES;
      assert.deepEqual(upsOf(cache.table, "eu-central").map((u) => u.healthy), [want]);
      clock.t += s.ttlMs;
    }
    const said = warn.mock.calls.map((c) => JSON.parse(c.arguments[0]));
    const misnamed = said.filter((w) => /names a region no table has/.test(w.msg));
    assert.deepEqual(
      misnamed.map((w) => [w.url, w.named]),
      [[s.sources[0], "eu-centrla"]],
      "once, however many refreshes",
    );
  });

  test("what a source answers for outweighs the region named for it", async () => {
    // Named for us-east by mistake, it is eu-central's gateway: when it dies, eu-central is
    // the region that has lost its gateway.
    const gw = await twoGateways("http://eu.example", "http://us.example");
    const { clock, cache, s } = cacheOn([gw.eu, gw.us]);
    s.regionOf = new Map([[s.sources[0], "us-east"]]);
    await cache.refresh(s);
    gw.eu.dead = true;
    for (let i = 0; i < MISSES; i++) {
      clock.t += s.ttlMs;
      await cache.refresh(s);
    }
    assert.deepEqual(upsOf(cache.table, "eu-central").map((u) => u.healthy), [false]);
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);
  });

  test("a region with no table source of its own is not marked down for it", async () => {
    // ROUTING_TABLE_URLS lists one gateway of a fleet sharing Redis: it shows every region.
    const gw = {};
    gw.eu = await gateway("eu-central", () => ({
      regions: [
        region("eu-central", 50.11, 8.68, "http://eu.example", [up("eu-central-1")]),
        region("us-east", 37.37, -79.82, "http://us.example", [up("us-east-1")]),
      ],
    }));
    const { clock, cache, s } = cacheOn([gw.eu]);
    for (let i = 0; i <= MISSES + 1; i++) {
      await cache.refresh(s);
      clock.t += s.ttlMs;
    }
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);
  });

  test("fallback-only regions route while no source answers, and not once one does", async () => {
    // Each gateway lists only its own region's backends; the URLs are the fallback's.
    const gw = {};
    const only = (self) => () => ({
      regions: [
        region("eu-central", 50.11, 8.68, "", self === "eu-central" ? [up("eu-central-1")] : []),
        region("us-east", 37.37, -79.82, "", self === "us-east" ? [up("us-east-1")] : []),
      ],
    });
    gw.eu = await gateway("eu-central", only("eu-central"));
    gw.us = await gateway("us-east", only("us-east"));
    gw.eu.dead = true;
    gw.us.dead = true;
    const fallback = {
      regions: [
        region("eu-central", 50.11, 8.68, gw.eu.url, [up("eu-central-1")]),
        region("us-east", 37.37, -79.82, gw.us.url, [up("us-east-1")]),
      ],
    };
    const { clock, cache, s } = cacheOn([gw.eu, gw.us], fallback);
    await cache.refresh(s);
    assert.equal(cache.state, "fallback");
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);

    // Nothing answers again: the table routed on stays as it is.
    clock.t += s.ttlMs;
    await cache.refresh(s);
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);

    // eu-central answers, us-east does not: all that says us-east is up is the fallback.
    gw.eu.dead = false;
    clock.t += s.ttlMs;
    await cache.refresh(s);
    assert.equal(cache.state, "fresh");
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [false]);
    assert.equal(cache.table.regions.get("us-east").url, gw.us.url, "the fallback's URL");

    // us-east's own table answers: healthy as it says.
    gw.us.dead = false;
    clock.t += s.ttlMs;
    await cache.refresh(s);
    assert.deepEqual(upsOf(cache.table, "us-east").map((u) => u.healthy), [true]);
  });
});
