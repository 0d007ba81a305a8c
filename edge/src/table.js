// @ts-check
/**
 * The routing table the Worker routes on: read from the regional gateways' `/routing-table`
 * (their ops listeners, with the ops token), merged, cached per isolate for `TABLE_TTL_S`,
 * refreshed in the background after that (the request in hand never waits for it once a
 * table is known), kept when a refresh fails (served stale), and on a cold start with every
 * gateway unreachable replaced by the static fallback table from the Worker's config.
 *
 * The JSON is `/routing-table`'s (gateway/http/endpoints.py): `{self_region, policy,
 * regions: [{id, latitude, longitude, url, upstreams: [{id, models, weight, bias_ms,
 * drained, healthy, ttft_ms, queue_depth, slots}]}]}`; absent fields take the gateway's
 * defaults, so a hand-written fallback needs only ids, coordinates, urls and models.
 */

/** @typedef {import("./router.js").Table} Table */
/** @typedef {import("./router.js").Region} Region */
/** @typedef {import("./router.js").Upstream} Upstream */
/** @typedef {import("./router.js").Policy} Policy */
/** @typedef {"fresh" | "stale" | "fallback"} TableState */

// gateway/defaults.py's, for fields a table leaves out
export const DEFAULT_POLICY = Object.freeze({
  tolerance_ms: 15,
  tolerance_ratio: 0.15,
  panic_threshold: 0.5,
});
const DEFAULT_SLOTS = 16;

export class TableError extends Error {}

/** @param {unknown} v @returns {v is Record<string, any>} */
function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** @param {unknown} v @param {string} what */
function finite(v, what) {
  if (typeof v !== "number" || !Number.isFinite(v)) throw new TableError(`${what} is not a number`);
  return v;
}

/** @param {unknown} v @param {number} fallback @param {string} what */
function numberOr(v, fallback, what) {
  return v === undefined || v === null ? fallback : finite(v, what);
}

/** @param {unknown} v @param {string} what @returns {number | null} */
function numberOrNull(v, what) {
  return v === undefined || v === null ? null : finite(v, what);
}

/** @param {unknown} v @param {string} what @returns {string[]} */
function strings(v, what) {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
    throw new TableError(`${what} is not a list of strings`);
  }
  return v;
}

/**
 * @param {Record<string, any>} raw @param {string} region @param {string} where
 * @returns {Upstream}
 */
function upstreamOf(raw, region, where) {
  if (typeof raw.id !== "string" || !raw.id) throw new TableError(`${where}.id is missing`);
  return {
    id: raw.id,
    region,
    models: new Set(strings(raw.models, `${where}.models`)),
    weight: numberOr(raw.weight, 1, `${where}.weight`),
    bias_ms: numberOr(raw.bias_ms, 0, `${where}.bias_ms`),
    drained: raw.drained === true,
    healthy: raw.healthy !== false,
    ttft_ms: numberOrNull(raw.ttft_ms, `${where}.ttft_ms`),
    queue_depth: numberOrNull(raw.queue_depth, `${where}.queue_depth`),
    slots: numberOr(raw.slots, DEFAULT_SLOTS, `${where}.slots`) || DEFAULT_SLOTS,
  };
}

/** @param {unknown} raw @returns {Policy} */
function policyOf(raw) {
  const p = isObject(raw) ? raw : {};
  const rules = Array.isArray(p.residency) ? p.residency : [];
  return {
    tolerance_ms: numberOr(p.tolerance_ms, DEFAULT_POLICY.tolerance_ms, "policy.tolerance_ms"),
    tolerance_ratio: numberOr(
      p.tolerance_ratio,
      DEFAULT_POLICY.tolerance_ratio,
      "policy.tolerance_ratio",
    ),
    panic_threshold: numberOr(
      p.panic_threshold,
      DEFAULT_POLICY.panic_threshold,
      "policy.panic_threshold",
    ),
    residency: rules.map((r, i) => {
      if (!isObject(r)) throw new TableError(`policy.residency[${i}] is not an object`);
      const up = (/** @type {string} */ s) => s.toUpperCase();
      return {
        name: typeof r.name === "string" ? r.name : `rule ${i}`,
        countries: new Set(strings(r.countries, `policy.residency[${i}].countries`).map(up)),
        continents: new Set(strings(r.continents, `policy.residency[${i}].continents`).map(up)),
        regions: new Set(strings(r.regions, `policy.residency[${i}].regions`)),
      };
    }),
  };
}

/**
 * A routing-table document as the router takes it. Throws TableError naming the bad field.
 * @param {unknown} doc
 * @returns {Table & {selfRegion: string | null, explicitPolicy: boolean}}
 */
export function normalizeTable(doc) {
  if (!isObject(doc) || !Array.isArray(doc.regions)) {
    throw new TableError("not a routing table: no regions list");
  }
  /** @type {Map<string, Region>} */
  const regions = new Map();
  /** @type {Upstream[]} */
  const upstreams = [];
  doc.regions.forEach((/** @type {unknown} */ r, /** @type {number} */ i) => {
    const where = `regions[${i}]`;
    if (!isObject(r) || typeof r.id !== "string" || !r.id) {
      throw new TableError(`${where} has no id`);
    }
    regions.set(r.id, {
      id: r.id,
      latitude: finite(r.latitude, `${where}.latitude`),
      longitude: finite(r.longitude, `${where}.longitude`),
      url: typeof r.url === "string" ? r.url.replace(/\/+$/, "") : "",
    });
    const ups = Array.isArray(r.upstreams) ? r.upstreams : [];
    ups.forEach((/** @type {unknown} */ u, /** @type {number} */ j) => {
      if (!isObject(u)) throw new TableError(`${where}.upstreams[${j}] is not an object`);
      upstreams.push(upstreamOf(u, r.id, `${where}.upstreams[${j}]`));
    });
  });
  return {
    regions,
    upstreams,
    policy: policyOf(doc.policy),
    selfRegion: typeof doc.self_region === "string" ? doc.self_region : null,
    explicitPolicy: isObject(doc.policy),
  };
}

/**
 * One table from several: each region as its own gateway sees it (the authority on its own
 * backends), else as another gateway that lists upstreams for it sees it (a fleet sharing
 * Redis knows every region), else as last known, else as the fallback says. A URL missing
 * from the chosen entry comes from the fallback, so the URLs may live in the Worker's config
 * alone.
 * @param {ReturnType<typeof normalizeTable>[]} fresh   tables just read, in source order
 * @param {Table | null} previous
 * @param {ReturnType<typeof normalizeTable> | null} fallback
 * @returns {Table}
 */
export function mergeTables(fresh, previous, fallback) {
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
    const source =
      fresh.find((t) => t.selfRegion === id && has(t, id)) ??
      fresh.find((t) => has(t, id) && ups(t, id).length > 0) ??
      (previous && has(previous, id) ? previous : null) ??
      (fallback && has(fallback, id) ? fallback : null) ??
      /** @type {Table} */ (fresh.find((t) => has(t, id)));
    const region = /** @type {Region} */ (source.regions.get(id));
    const url = region.url || fallback?.regions.get(id)?.url || previous?.regions.get(id)?.url;
    regions.set(id, { ...region, url: url || "" });
    upstreams.push(...ups(source, id));
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
 * @property {string} token            the ops token
 * @property {number} ttlMs
 * @property {number} timeoutMs
 * @property {ReturnType<typeof normalizeTable> | null} fallback
 */

/**
 * Read every source at once; the ones that answered, in source order, and what the others
 * said.
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
  const errors = [];
  for (const [i, r] of results.entries()) {
    if (r.status === "fulfilled") fresh.push(r.value);
    else errors.push(`${s.sources[i]}: ${r.reason instanceof Error ? r.reason.message : r.reason}`);
  }
  return { fresh, errors };
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
    const { fresh, errors } = s.sources.length ? await readSources(s) : { fresh: [], errors: [] };
    this.lastErrors = errors;
    if (errors.length) console.warn(JSON.stringify({ msg: "routing table read failed", errors }));
    const now = this.now();
    this.refreshingSince = -Infinity;
    if (fresh.length > 0) {
      this.table = mergeTables(fresh, this.table, s.fallback);
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
}
