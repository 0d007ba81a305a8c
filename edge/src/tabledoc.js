// @ts-check
/**
 * One routing-table document as the router takes it: `/routing-table`'s JSON
 * (gateway/http/endpoints.py), `{self_region, policy, regions: [{id, latitude, longitude, url,
 * upstreams: [{id, models, weight, bias_ms, drained, healthy, ttft_ms, queue_depth, slots}]}]}`;
 * absent fields take the gateway's defaults, so a hand-written fallback needs only ids,
 * coordinates, urls and models.
 *
 * A gateway's table comes from a config the gateway checked; the Worker's FALLBACK_TABLE was
 * written by hand and nothing checked it, so it is read `strict`: the checks of the gateway's
 * own config (gateway/config_routing.py) that the router depends on, each error naming the field.
 */

/** @typedef {import("./router.js").Region} Region */
/** @typedef {import("./router.js").Upstream} Upstream */
/** @typedef {import("./router.js").Policy} Policy */
/** @typedef {import("./router.js").Table} Table */

// gateway/defaults.py's, for fields a table leaves out
export const DEFAULT_POLICY = Object.freeze({
  tolerance_ms: 15,
  tolerance_ratio: 0.15,
  panic_threshold: 0.5,
});
const DEFAULT_SLOTS = 16;

export class TableError extends Error {}

/**
 * Why `text` is not a URL the Worker can fetch, or null when it is one. `origin`: a region
 * gateway's URL, to which the client's path is appended, so a scheme, host and port alone (as
 * the gateway's own check, gateway/config.py public_url). Credentials are refused: fetch()
 * throws on a URL that carries them, and the ops token is the gateways' authentication.
 * @param {string} text @param {{origin?: boolean}} [opts]
 * @returns {string | null}
 */
export function urlProblem(text, { origin = false } = {}) {
  let u;
  try {
    u = new URL(text);
  } catch {
    return "is not a URL";
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return "is not http:// or https://";
  if (!u.hostname) return "has no host";
  if (u.username || u.password) return "carries credentials";
  if (origin && (u.pathname !== "/" || u.search || u.hash)) {
    return "has a path; want the gateway's origin alone (https://host[:port])";
  }
  return null;
}

/** @param {unknown} v @returns {v is Record<string, any>} */
export function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** @param {unknown} v @param {string} what @param {[number, number]} [range] */
function finite(v, what, range = [-Infinity, Infinity]) {
  if (typeof v !== "number" || !Number.isFinite(v)) throw new TableError(`${what} is not a number`);
  if (v < range[0] || v > range[1]) {
    const [lo, hi] = range;
    const want = hi === Infinity ? `${lo} or more` : `from ${lo} to ${hi}`;
    throw new TableError(`${what} = ${v}: want ${want}`);
  }
  return v;
}

/**
 * @param {unknown} v @param {number} fallback @param {string} what
 * @param {[number, number]} [range]
 */
function numberOr(v, fallback, what, range) {
  return v === undefined || v === null ? fallback : finite(v, what, range);
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
 * @param {boolean} strict
 * @returns {Upstream}
 */
function upstreamOf(raw, region, where, strict) {
  if (typeof raw.id !== "string" || !raw.id) throw new TableError(`${where}.id is missing`);
  if (strict) {
    // "modles" or "drainde" passed: a fallback serving no model (a 404 for every request,
    // which the SDKs do not retry) or a drain ignored, while /healthz said ok.
    checkKeys(raw, UPSTREAM_KEYS, where);
    if (!Array.isArray(raw.models) || raw.models.length === 0) {
      throw new TableError(`${where}.models is not a list of one or more model names`);
    }
  }
  // A negative weight breaks the weighted pick, and slots under 1 make a queue cost nothing
  // or less: the gateway's config refuses both (weight >= 0, slots >= 1).
  /** @type {[number, number] | undefined} */
  const weightRange = strict ? [0, Infinity] : undefined;
  /** @type {[number, number] | undefined} */
  const slotRange = strict ? [1, Infinity] : undefined;
  return {
    id: raw.id,
    region,
    models: new Set(strings(raw.models, `${where}.models`)),
    weight: numberOr(raw.weight, 1, `${where}.weight`, weightRange),
    bias_ms: numberOr(raw.bias_ms, 0, `${where}.bias_ms`),
    drained: raw.drained === true,
    healthy: raw.healthy !== false,
    ttft_ms: numberOrNull(raw.ttft_ms, `${where}.ttft_ms`),
    queue_depth: numberOrNull(raw.queue_depth, `${where}.queue_depth`),
    slots: numberOr(raw.slots, DEFAULT_SLOTS, `${where}.slots`, slotRange) || DEFAULT_SLOTS,
  };
}

// The policy's numbers, as the gateway's config bounds them (RoutingPolicy).
/** @type {Readonly<Record<keyof typeof DEFAULT_POLICY, [number, number]>>} */
const POLICY_RANGES = Object.freeze({
  tolerance_ms: [0, Infinity],
  tolerance_ratio: [0, Infinity],
  panic_threshold: [0, 1],
});

/**
 * `strict` (FALLBACK_TABLE): what a gateway's own document is trusted with is an operator's
 * mistake here, refused as the gateway's config refuses it: a policy or residency list of
 * the wrong type, a field it does not have, a number out of its range.
 * @param {unknown} raw @param {boolean} [strict] @returns {Policy}
 */
export function policyOf(raw, strict = false) {
  if (strict && raw !== undefined && raw !== null) {
    if (!isObject(raw)) throw new TableError("policy is not an object");
    checkKeys(raw, POLICY_KEYS, "policy");
    if (raw.residency !== undefined && raw.residency !== null && !Array.isArray(raw.residency)) {
      throw new TableError("policy.residency is not a list");
    }
  }
  const p = isObject(raw) ? raw : {};
  const rules = Array.isArray(p.residency) ? p.residency : [];
  const num = (/** @type {keyof typeof DEFAULT_POLICY} */ k) =>
    numberOr(p[k], DEFAULT_POLICY[k], `policy.${k}`, strict ? POLICY_RANGES[k] : undefined);
  return {
    tolerance_ms: num("tolerance_ms"),
    tolerance_ratio: num("tolerance_ratio"),
    panic_threshold: num("panic_threshold"),
    residency: rules.map((r, i) => {
      if (!isObject(r)) throw new TableError(`policy.residency[${i}] is not an object`);
      if (strict) checkKeys(r, RULE_KEYS, `policy.residency[${i}]`);
      const name = String(r.name ?? "");
      if (strict && name !== "" && (!RULE_NAME.test(name) || /[;=]/.test(name))) {
        throw new TableError(
          `policy.residency[${i}].name ${JSON.stringify(r.name)}: 1-64 printable ASCII ` +
            "characters, no ; or = and no space at either end (it is sent in geogate-route)",
        );
      }
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
 * @param {Record<string, any>} r @param {string} where @param {boolean} strict
 * @returns {Region}
 */
function regionOf(r, where, strict) {
  const url = typeof r.url === "string" ? r.url.replace(/\/+$/, "") : "";
  if (strict && r.url !== undefined && r.url !== null && r.url !== "") {
    const why = typeof r.url === "string" ? urlProblem(r.url, { origin: true }) : "is not a string";
    if (why) throw new TableError(`${where}.url ${JSON.stringify(r.url)} ${why}`);
  }
  return {
    id: r.id,
    latitude: finite(r.latitude, `${where}.latitude`, strict ? [-90, 90] : undefined),
    longitude: finite(r.longitude, `${where}.longitude`, strict ? [-180, 180] : undefined),
    url,
  };
}

/**
 * A routing-table document as the router takes it. Throws TableError naming the bad field.
 * `strict` (FALLBACK_TABLE): also the ranges, URLs, unique ids and residency regions.
 * @param {unknown} doc
 * @param {{strict?: boolean}} [opts]
 * @returns {Table & {selfRegion: string | null, explicitPolicy: boolean}}
 */
export function normalizeTable(doc, { strict = false } = {}) {
  if (!isObject(doc) || !Array.isArray(doc.regions)) {
    throw new TableError("not a routing table: no regions list");
  }
  // A misspelt "policy" dropped its residency rules: clients were routed where a rule
  // forbids, while /healthz said ok.
  if (strict) checkKeys(doc, TABLE_KEYS, "the table");
  /** @type {Map<string, Region>} */
  const regions = new Map();
  /** @type {Upstream[]} */
  const upstreams = [];
  doc.regions.forEach((/** @type {unknown} */ r, /** @type {number} */ i) => {
    const where = `regions[${i}]`;
    if (!isObject(r) || typeof r.id !== "string" || !r.id) {
      throw new TableError(`${where} has no id`);
    }
    if (strict && regions.has(r.id)) {
      throw new TableError(`${where}.id ${JSON.stringify(r.id)} is listed twice`);
    }
    regions.set(r.id, regionOf(r, where, strict));
    if (strict) checkKeys(r, REGION_KEYS, where);
    if (strict && r.upstreams !== undefined && !Array.isArray(r.upstreams)) {
      throw new TableError(`${where}.upstreams is not a list`);
    }
    const ups = Array.isArray(r.upstreams) ? r.upstreams : [];
    ups.forEach((/** @type {unknown} */ u, /** @type {number} */ j) => {
      const at = `${where}.upstreams[${j}]`;
      if (!isObject(u)) throw new TableError(`${at} is not an object`);
      const upstream = upstreamOf(u, r.id, at, strict);
      if (strict && upstreams.some((x) => x.id === upstream.id)) {
        throw new TableError(`${at}.id ${JSON.stringify(upstream.id)} is listed twice`);
      }
      upstreams.push(upstream);
    });
  });
  const policy = policyOf(doc.policy, strict);
  if (strict) {
    // A misspelt "upstreams" left a fallback with none: /healthz said ok while every
    // request was a 404 model_not_found, which the SDKs do not retry.
    if (upstreams.length === 0) throw new TableError("no region lists any upstreams");
    checkResidency(policy, regions);
  }
  return {
    regions,
    upstreams,
    policy,
    selfRegion: typeof doc.self_region === "string" ? doc.self_region : null,
    explicitPolicy: isObject(doc.policy),
  };
}

// The fields a region, a policy and a residency rule may have in FALLBACK_TABLE: the ones the
// gateway's /routing-table writes. Another is a misspelling ("upstream", "region", "country")
// that would quietly leave a region without upstreams or a rule without its regions.
const REGION_KEYS = new Set(["id", "name", "latitude", "longitude", "url", "healthy", "upstreams"]);
const POLICY_KEYS = new Set(["tolerance_ms", "tolerance_ratio", "panic_threshold", "residency"]);
const RULE_KEYS = new Set(["name", "countries", "continents", "regions"]);
// The document's own and an upstream's, as /routing-table writes them (gateway/http/endpoints.py:
// routing_table, _upstream_row), the state fields among them (read, or ignored: rtt_ms...).
const TABLE_KEYS = new Set([
  "self_region",
  "origin",
  "version",
  "shared_state",
  "fleet_config_refused",
  "policy",
  "regions",
  "worker",
]);
const UPSTREAM_KEYS = new Set([
  "id",
  "healthy",
  "drained",
  "weight",
  "bias_ms",
  "rtt_ms",
  "models",
  "slots",
  "in_flight",
  "queue_depth",
  "kv_usage",
  "ttft_ms",
  "last_error",
  "ejected_s",
  "ejection_cause",
  "times_ejected",
  "seen_by",
  "fleet_down",
]);
// A rule's name goes into the geogate-route header: the gateway's config takes these alone
// (gateway/checks.py RESIDENCY_NAME: printable ASCII, no ";" or "=", no space at either
// end); "GB—US only" went out garbled.
const RULE_NAME = /^[!-~](?:[ -~]{0,62}[!-~])?$/;

/**
 * @param {Record<string, unknown>} obj @param {Set<string>} known @param {string} where
 */
function checkKeys(obj, known, where) {
  const unknown = Object.keys(obj).filter((k) => !known.has(k));
  if (unknown.length > 0) {
    const names = unknown.map((k) => JSON.stringify(k)).join(", ");
    throw new TableError(`${where} has ${names}: not a field of it (${[...known].join(", ")})`);
  }
}

/**
 * A rule naming a region the table lacks keeps its clients from it for good: a misspelt
 * region would leave them nowhere to go (the gateway's config refuses it too). A rule with
 * no regions, or one that names no country and no continent, is refused as the gateway's
 * config refuses it: the one keeps its clients from every region (a 403 for each request),
 * the other applies to nobody.
 * @param {Policy} policy @param {Map<string, Region>} regions
 */
function checkResidency(policy, regions) {
  policy.residency.forEach((rule, i) => {
    if (rule.regions.size === 0) {
      throw new TableError(`policy.residency[${i}] names no regions`);
    }
    if (rule.countries.size === 0 && rule.continents.size === 0) {
      throw new TableError(`policy.residency[${i}] names no countries and no continents`);
    }
    for (const id of rule.regions) {
      if (!regions.has(id)) {
        throw new TableError(
          `policy.residency[${i}].regions names ${JSON.stringify(id)}, which is not among ` +
            `the regions (${[...regions.keys()].join(", ")})`,
        );
      }
    }
  });
}
