// @ts-check
/**
 * The routing table the Worker routes on: read from the regional gateways' `/routing-table`
 * (their ops listeners, with the ops token), merged, cached per isolate for `TABLE_TTL_S`,
 * refreshed in the background after that (the request in hand never waits for it once a
 * table is known), kept when a refresh fails (served stale), and on a cold start with every
 * gateway unreachable replaced by the static fallback table from the Worker's config.
 *
 * A region's gateway is the only way the Worker reaches the region, so a region whose own
 * gateway's table stops answering is marked unhealthy after MAX_OWN_MISSES refreshes, whatever
 * other views of its backends say; what is last known of a region is used for at most
 * MAX_LAST_KNOWN_AGE_MS; and the fallback, which knows nothing of health, counts only while
 * no gateway answers at all. One document's shape and checks are src/tabledoc.js's.
 */

import { normalizeTable, policyOf, TableError } from "./tabledoc.js";

// Re-exported: what the rest of the Worker and its tests know as the table's.
export { DEFAULT_POLICY, normalizeTable, TableError } from "./tabledoc.js";

/** @typedef {import("./router.js").Table} Table */
/** @typedef {import("./router.js").Region} Region */
/** @typedef {import("./router.js").Upstream} Upstream */
/** @typedef {import("./router.js").Policy} Policy */
/** @typedef {"fresh" | "stale" | "fallback"} TableState */
/** @typedef {ReturnType<typeof normalizeTable>} TableDoc */

// Refreshes in a row without a region's own table (the one whose self_region it is) before
// its backends count as down: another gateway's view of them says nothing of the gateway the
// Worker must go through. Two, as the gateway's own UNHEALTHY_THRESHOLD: one lost read is
// noise, two a gateway that is gone (20 s at TABLE_TTL_S's default 10).
export const MAX_OWN_MISSES = 2;
// How long after a table that answered last gave a region's entry that entry may still be
// used (as last known) when no table that answers lists the region's backends. Past this, its
// TTFT, queue and models are a fleet that has moved on: the region is then what the fallback
// says (down, as a source answers), or gone. Long enough to ride out a TTL or two of any
// setting; the region is marked down long before, by MAX_OWN_MISSES.
export const MAX_LAST_KNOWN_AGE_MS = 5 * 60 * 1000;

/**
 * What one isolate has seen of each region's sources, by region id.
 * @typedef {object} Sightings
 * @property {Map<string, number>} misses  refreshes in a row without the region's own table
 * @property {Map<string, number>} readAt  when a table that answered last gave its entry (ms)
 */

/** @returns {Sightings} */
export function noSightings() {
  return { misses: new Map(), readAt: new Map() };
}

/**
 * One table from several: each region as its own gateway sees it (the authority on its own
 * backends), else as another gateway that lists upstreams for it sees it (a fleet sharing
 * Redis knows every region), else as last known (read within MAX_LAST_KNOWN_AGE_MS), else as
 * the fallback says; a region none of these has is left out. A URL missing from the chosen
 * entry comes from the fallback, so the URLs may live in the Worker's config alone.
 *
 * Health, once any table answered (`fresh` not empty): a region whose own table missed
 * MAX_OWN_MISSES refreshes in a row (`seen.misses`), and one known from the fallback alone, has
 * its backends marked down; the router then tries it only after the healthy regions (or in
 * panic). With nothing read (a cold start with every source failing) the fallback is routed
 * on as it is. `seen.readAt` is brought up to date for the regions read now.
 * @param {ReturnType<typeof normalizeTable>[]} fresh   tables just read, in source order
 * @param {Table | null} previous
 * @param {ReturnType<typeof normalizeTable> | null} fallback
 * @param {Sightings} [seen]
 * @param {number} [now]  ms, on the clock of `seen.readAt`
 * @returns {Table}
 */
export function mergeTables(fresh, previous, fallback, seen = noSightings(), now = 0) {
  /** @type {string[]} */
  const ids = [];
  for (const t of [...fresh, previous, fallback]) {
    for (const id of t ? t.regions.keys() : []) if (!ids.includes(id)) ids.push(id);
  }
  /** @type {Map<string, Region>} */
  const regions = new Map();
  /** @type {Upstream[]} */
  const upstreams = [];
  /** @param {Table | null} t @param {string} id */
  const has = (t, id) => t !== null && t.regions.has(id);
  /** @param {Table} t @param {string} id */
  const ups = (t, id) => t.upstreams.filter((u) => u.region === id);
  for (const id of ids) {
    const read =
      fresh.find((t) => t.selfRegion === id && has(t, id)) ??
      fresh.find((t) => has(t, id) && ups(t, id).length > 0);
    const readAt = read ? now : seen.readAt.get(id);
    const lastKnown =
      previous && has(previous, id) && readAt !== undefined && now - readAt <= MAX_LAST_KNOWN_AGE_MS
        ? previous
        : null;
    const fromFallback = fallback && has(fallback, id) ? fallback : null;
    const source = read ?? lastKnown ?? fromFallback ?? fresh.find((t) => has(t, id));
    if (source === undefined) continue; // known only as last known, and that is too old
    if (read) seen.readAt.set(id, now);
    const region = /** @type {Region} */ (source.regions.get(id));
    const url = region.url || fallback?.regions.get(id)?.url || previous?.regions.get(id)?.url;
    regions.set(id, { ...region, url: url || "" });
    const gone = (seen.misses.get(id) ?? 0) >= MAX_OWN_MISSES;
    const onlyFallback = fresh.length > 0 && source === fromFallback;
    // A region with no URL is never sent to and has no gateway to miss: left as it is, so it
    // does not move the router's panic threshold.
    const down = Boolean(url) && (gone || onlyFallback);
    for (const u of ups(source, id)) upstreams.push(down ? { ...u, healthy: false } : u);
  }
  const policy =
    fresh.find((t) => t.explicitPolicy)?.policy ??
    previous?.policy ??
    (fallback?.explicitPolicy ? fallback.policy : null) ??
    policyOf(null);
  return { regions, upstreams, policy };
}

/**
 * @typedef {object} TableSettings
 * @property {string[]} sources        the gateways' /routing-table URLs
 * @property {Map<string, string>} [regionOf]  source URL -> its region, where the setting names it
 * @property {string} token            the ops token
 * @property {number} ttlMs
 * @property {number} timeoutMs
 * @property {TableDoc | null} fallback
 */

/**
 * Read every source at once; the tables that answered, in source order, with their URLs, and
 * the URLs that did not, with what they said.
 * @param {TableSettings} s
 */
async function readSources(s) {
  const headers = s.token ? { authorization: `Bearer ${s.token}` } : undefined;
  const results = await Promise.allSettled(
    s.sources.map(async (url) => {
      const resp = await fetch(url, { headers, signal: AbortSignal.timeout(s.timeoutMs) });
      if (resp.status !== 200) {
        await resp.body?.cancel();
        throw new TableError(`HTTP ${resp.status}`);
      }
      return normalizeTable(await resp.json());
    }),
  );
  const fresh = [];
  /** @type {string[]} */
  const answered = [];
  /** @type {string[]} */
  const failed = [];
  const errors = [];
  for (const [i, r] of results.entries()) {
    if (r.status === "fulfilled") {
      fresh.push(r.value);
      answered.push(s.sources[i]);
    } else {
      failed.push(s.sources[i]);
      errors.push(`${s.sources[i]}: ${r.reason instanceof Error ? r.reason.message : r.reason}`);
    }
  }
  return { fresh, answered, failed, errors };
}

/** The table of one isolate. */
export class TableCache {
  /** @param {() => number} [now] */
  constructor(now = Date.now) {
    this.now = now;
    /** @type {Table | null} */
    this.table = null;
    /** @type {TableState} */
    this.state = "fallback";
    this.expires = 0;
    this.refreshingSince = -Infinity;
    /** @type {string[]} */
    this.lastErrors = [];
    this.seen = noSightings();
    /** @type {Map<string, string>} source URL -> the self_region it last answered with */
    this.sourceRegion = new Map();
    /** @type {Set<string>} source URLs named for a region no table has (warned of once) */
    this.misnamed = new Set();
    // Refreshes started, and the last of them whose reads were counted by one that ended.
    this.started = 0;
    this.counted = 0;
  }

  /**
   * The table to route this request on, and how current it is. Only a cold isolate waits
   * (at most `timeoutMs`); after that a table past its TTL is served while one request
   * refreshes it in the background (`waitUntil`).
   * @param {TableSettings} s
   * @param {{waitUntil(p: Promise<unknown>): void}} ctx
   * @returns {Promise<{table: Table, state: TableState}>}
   */
  async get(s, ctx) {
    const now = this.now();
    if (this.table === null) {
      await this.refresh(s);
    } else if (now >= this.expires && now - this.refreshingSince > s.timeoutMs) {
      // One refresh at a time per isolate; one that never finished stops counting after
      // its timeout. Another request's promise is never awaited: workerd ties I/O to the
      // request that started it.
      this.refreshingSince = now;
      ctx.waitUntil(this.refresh(s));
    }
    const table = /** @type {Table} */ (this.table);
    const state = this.state === "fresh" && now >= this.expires ? "stale" : this.state;
    return { table, state };
  }

  /** @param {TableSettings} s */
  async refresh(s) {
    const round = ++this.started;
    const nothing = { fresh: [], answered: [], failed: [], errors: [] };
    const { fresh, answered, failed, errors } = s.sources.length ? await readSources(s) : nothing;
    this.lastErrors = errors;
    if (errors.length) console.warn(JSON.stringify({ msg: "routing table read failed", errors }));
    const now = this.now();
    this.refreshingSince = -Infinity;
    // Refreshes that ran at the same time saw the same moment: one miss between them. A cold
    // isolate's requests each refresh (another request's promise cannot be awaited), and
    // three at once made a single lost read MAX_OWN_MISSES: the region down at its first
    // blip. Counted by the first to end; one that started before that ended counts nothing.
    if (round > this.counted) {
      this.counted = this.started;
      this.countMisses(fresh, answered, failed, s.fallback, s.regionOf);
    }
    if (fresh.length > 0) {
      this.table = mergeTables(fresh, this.table, s.fallback, this.seen, now);
      this.state = "fresh";
    } else if (this.table === null) {
      if (s.fallback === null) {
        throw new TableError(
          `no routing table: every source failed (${errors.join("; ") || "none configured"}) ` +
            "and FALLBACK_TABLE is not set",
        );
      }
      this.table = mergeTables([], null, s.fallback);
      this.state = "fallback";
    } else if (this.state === "fresh") {
      this.state = "stale"; // served stale on error, until a source answers again
    }
    // After a failure too: retry once a TTL later, not on every request.
    this.expires = now + s.ttlMs;
  }

  /**
   * One more refresh for each region known: its own table answered (no misses), or its source
   * failed (one more). A failed source is the region's it last answered for; one never heard
   * from (dead since the isolate started), the region ROUTING_TABLE_URLS names for it, else
   * the region whose gateway URL has its host name, else none's: a mistyped URL must not mark
   * healthy regions down. A region with no source of its own (ROUTING_TABLE_URLS lists some
   * gateways of a fleet sharing Redis) is never down for it. Counted when nothing answered
   * too: a region still down is down at once. A region named that no table has (a misspelt
   * key: FALLBACK_TABLE's regions, where set, refuse it) is warned of, once a URL, and the
   * host rule used instead: counted against no region, the source could never mark its own.
   * @param {TableDoc[]} fresh @param {string[]} answered  their URLs
   * @param {string[]} failed @param {Table | null} fallback
   * @param {Map<string, string>} [declared]  source URL -> region, as ROUTING_TABLE_URLS names it
   */
  countMisses(fresh, answered, failed, fallback, declared = new Map()) {
    for (const [i, t] of fresh.entries()) {
      if (!t.selfRegion) continue;
      const said = declared.get(answered[i]);
      if (said && said !== t.selfRegion && this.sourceRegion.get(answered[i]) !== t.selfRegion) {
        // What it answers is what it is; the setting is only for before it first answered.
        const msg = "ROUTING_TABLE_URLS names another region for this source";
        const url = answered[i];
        console.warn(JSON.stringify({ msg, url, named: said, self_region: t.selfRegion }));
      }
      this.sourceRegion.set(answered[i], t.selfRegion);
    }
    const own = new Set(fresh.map((t) => t.selfRegion));
    const tables = [...fresh, this.table, fallback].flatMap((t) => (t ? [t] : []));
    /** @type {Map<string, string>} a region gateway's host name -> the region */
    const byHost = new Map();
    for (const t of tables) {
      for (const [id, r] of t.regions) {
        const host = r.url ? hostName(r.url) : "";
        if (host) byHost.set(host, byHost.has(host) && byHost.get(host) !== id ? "" : id);
      }
    }
    const known = new Set(tables.flatMap((t) => [...t.regions.keys()]));
    /** @param {string} url */
    const named = (url) => {
      const id = declared.get(url);
      if (id === undefined || known.size === 0 || known.has(id)) return id;
      if (!this.misnamed.has(url)) {
        this.misnamed.add(url);
        const msg = "ROUTING_TABLE_URLS names a region no table has; its host name is used";
        console.warn(JSON.stringify({ msg, url, named: id, regions: [...known] }));
      }
      return undefined;
    };
    const suspects = new Set(
      failed.map((url) => this.sourceRegion.get(url) ?? named(url) ?? byHost.get(hostName(url))),
    );
    /** @type {Map<string, number>} */
    const misses = new Map();
    for (const id of known) {
      const missed = !own.has(id) && suspects.has(id);
      misses.set(id, missed ? (this.seen.misses.get(id) ?? 0) + 1 : 0);
    }
    this.seen.misses = misses; // regions no longer known are forgotten
  }
}

/** @param {string} url @returns {string} its host name, "" when it is no URL */
function hostName(url) {
  try {
    return new URL(url).hostname;
  } catch {
    return "";
  }
}
