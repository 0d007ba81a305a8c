// @ts-check
/**
 * The Worker's settings: wrangler.jsonc's `vars` and the secrets (`wrangler secret put`),
 * each with a named default and the reason for it.
 */

import { OriginError, parseOrigins } from "./cors.js";
import { isObject, normalizeTable, TableError, urlProblem } from "./tabledoc.js";

/**
 * @typedef {object} Env
 * @property {string | string[] | Record<string, string>} [ROUTING_TABLE_URLS]  the gateways'
 *   ops /routing-table URLs: a list, or by region id
 * @property {string | object} [FALLBACK_TABLE]  a routing table for a cold start with none
 * @property {string} [OPS_TOKEN]      secret: the gateways' ops.token
 * @property {string} [EDGE_SECRET]    secret: the key the gateways list in edge.keys
 * @property {string} [EDGE_KEY_ID]    that key's id in edge.keys
 * @property {string | number} [TABLE_TTL_S]
 * @property {string | number} [TABLE_TIMEOUT_S]
 * @property {string | number} [FIRST_BYTE_TIMEOUT_S]
 * @property {string | number} [RESPONSE_TIMEOUT_S]
 * @property {string | number} [MAX_ATTEMPTS]
 * @property {string | number} [MAX_BODY_BYTES]
 * @property {string | number} [DEFAULT_LATITUDE]
 * @property {string | number} [DEFAULT_LONGITUDE]
 * @property {string | string[]} [CORS_ORIGINS]  browser apps' origins allowed, or "*"
 */

export const DEFAULTS = Object.freeze({
  // A region's health reaches every isolate within 10 s (plus the gateway's own detection);
  // requests in between fail over before their first byte, so nobody sees the gap. Each
  // isolate reads each gateway's table at most every 10 s: nothing to a gateway.
  TABLE_TTL_S: 10,
  // How long a cold isolate waits for the tables before routing on the fallback: one
  // cross-ocean round trip or two, not the client's patience.
  TABLE_TIMEOUT_S: 2,
  // Response headers from a region gateway: a little over the gateway's own
  // timeouts.first_byte_s (60) and timeouts.response_s (600), so its 504, which says what
  // timed out, reaches the client first; the Worker's is for a gateway that hangs.
  FIRST_BYTE_TIMEOUT_S: 65, // streaming requests
  // Non-streaming: the whole answer comes at once. On Cloudflare this one does not bind:
  // Cloudflare answers 524 after 100 s without response headers (src/proxy.js), so a
  // non-streaming request gets about 100 s there (a long generation should stream); 605 holds
  // where nothing cuts in first (a local run, a zone whose proxy read timeout was raised).
  RESPONSE_TIMEOUT_S: 605,
  MAX_ATTEMPTS: 3, // the nearest region, then a second, then a third (as retry.max_attempts)
  MAX_BODY_BYTES: 4 * 1024 * 1024, // the gateway's server.max_body_bytes: kept for failover
  DEFAULT_LATITUDE: 50.11, // Frankfurt, the gateway's geoip.default: where a request is
  DEFAULT_LONGITUDE: 8.68, // routed from when request.cf has no coordinates, country or continent
  EDGE_KEY_ID: "k1",
});

export class ConfigError extends Error {}

/**
 * @typedef {object} Settings
 * @property {import("./table.js").TableSettings} table
 * @property {string} keyId
 * @property {string} secret
 * @property {number} firstByteMs
 * @property {number} responseMs
 * @property {number} maxAttempts
 * @property {number} maxBodyBytes
 * @property {number} defaultLatitude
 * @property {number} defaultLongitude
 * @property {import("./cors.js").CorsOrigins | null} cors
 */

// A number as text: digits, a point, an exponent; no blank, hex ("0x3") or "Infinity".
const DECIMAL = /^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/**
 * @param {Env} env @param {keyof typeof DEFAULTS} name
 * @param {{min?: number, max?: number, integer?: boolean}} [bounds]
 */
function num(env, name, bounds = {}) {
  const raw = env[name];
  if (raw === undefined || raw === "") return /** @type {number} */ (DEFAULTS[name]);
  // A JSON number, or text that is a plain decimal (spaces around it, as a pasted value has,
  // are no mistake): Number() took " " and null as 0 (a TABLE_TTL_S of 0), true as 1 and
  // "0x3" as 3.
  const plain = typeof raw === "string" && DECIMAL.test(raw.trim());
  const v = typeof raw === "number" || plain ? Number(raw) : NaN;
  const { min = 0, max = Infinity, integer = false } = bounds;
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new ConfigError(
      `${name} = ${JSON.stringify(raw)}: want a ${integer ? "whole " : ""}number from ${min}` +
        (max === Infinity ? " up" : ` to ${max}`),
    );
  }
  return v;
}

/**
 * The table sources: a list of URLs, or an object naming each URL's region
 * (`{"eu-central": "https://ops.eu-central.example.com/routing-table", ...}`), as a JSON
 * value or JSON text (a plain string: URLs separated by commas). The region matters while a
 * gateway has never answered: its region is marked down by it only if it is known, and the
 * list form can tell only by the region URL's host name, which an ops host rarely shares.
 * @param {Env} env
 * @returns {{urls: string[], regionOf: Map<string, string>}}
 */
function sources(env) {
  const raw = env.ROUTING_TABLE_URLS ?? [];
  const want = 'want ["https://...", ...] or {"<region>": "https://...", ...}';
  let doc = raw;
  if (typeof raw === "string") {
    const text = raw.trim();
    try {
      doc = /^[[{]/.test(text) ? JSON.parse(text) : text.split(",");
    } catch {
      throw new ConfigError(`ROUTING_TABLE_URLS: not JSON; ${want}`);
    }
  }
  if (!Array.isArray(doc) && !isObject(doc)) throw new ConfigError(`ROUTING_TABLE_URLS: ${want}`);
  /** @type {[string | null, unknown][]} */
  const entries = Array.isArray(doc) ? doc.map((u) => [null, u]) : Object.entries(doc);
  /** @type {Map<string, string>} */
  const regionOf = new Map();
  /** @type {string[]} */
  const urls = [];
  for (const [region, u] of entries) {
    const name = region === null ? "" : `[${JSON.stringify(region)}]`;
    if (typeof u !== "string") {
      throw new ConfigError(`ROUTING_TABLE_URLS${name} = ${JSON.stringify(u)}: ${want}`);
    }
    const url = u.trim();
    if (!url && region === null) continue; // "a,b," or an empty variable
    if (region === "") throw new ConfigError("ROUTING_TABLE_URLS: a region id is empty");
    const why = urlProblem(url);
    if (why) throw new ConfigError(`ROUTING_TABLE_URLS${name}: ${JSON.stringify(url)} ${why}`);
    if (urls.includes(url)) throw new ConfigError(`ROUTING_TABLE_URLS: ${url} is listed twice`);
    urls.push(url);
    if (region !== null) regionOf.set(url, region);
  }
  return { urls, regionOf };
}

/** @param {Env} env */
function fallback(env) {
  const raw = env.FALLBACK_TABLE;
  if (raw === undefined || raw === "") return null;
  try {
    return normalizeTable(typeof raw === "string" ? JSON.parse(raw) : raw, { strict: true });
  } catch (err) {
    const why = err instanceof TableError || err instanceof SyntaxError ? err.message : String(err);
    throw new ConfigError(`FALLBACK_TABLE: ${why}`);
  }
}

/**
 * Each region ROUTING_TABLE_URLS names must be one of FALLBACK_TABLE's, where that is set:
 * a misspelt one would count its gateway's misses against a region no table has, and the
 * region that gateway serves would never be marked down for it (src/table.js).
 * @param {Map<string, string>} regionOf @param {import("./table.js").TableDoc | null} table
 */
function checkRegionsNamed(regionOf, table) {
  if (table === null) return;
  for (const id of regionOf.values()) {
    if (!table.regions.has(id)) {
      throw new ConfigError(
        `ROUTING_TABLE_URLS[${JSON.stringify(id)}]: FALLBACK_TABLE has no region ` +
          `${JSON.stringify(id)} (its regions: ${[...table.regions.keys()].join(", ")})`,
      );
    }
  }
}

/** @param {Env} env */
function corsOrigins(env) {
  try {
    return parseOrigins(env.CORS_ORIGINS);
  } catch (err) {
    if (err instanceof OriginError) throw new ConfigError(`CORS_ORIGINS: ${err.message}`);
    throw err;
  }
}

/** @type {WeakMap<object, Settings>} */
const cache = new WeakMap();

/**
 * The settings for `env` (read once per isolate). Throws ConfigError naming the variable.
 * @param {Env} env
 * @returns {Settings}
 */
export function settings(env) {
  let s = cache.get(env);
  if (s === undefined) {
    const { urls, regionOf } = sources(env);
    s = {
      table: {
        sources: urls,
        regionOf,
        token: env.OPS_TOKEN ?? "",
        ttlMs: num(env, "TABLE_TTL_S") * 1000,
        timeoutMs: num(env, "TABLE_TIMEOUT_S", { min: 0.001 }) * 1000,
        fallback: fallback(env),
      },
      keyId: env.EDGE_KEY_ID || DEFAULTS.EDGE_KEY_ID,
      secret: env.EDGE_SECRET ?? "",
      firstByteMs: num(env, "FIRST_BYTE_TIMEOUT_S", { min: 0.001 }) * 1000,
      responseMs: num(env, "RESPONSE_TIMEOUT_S", { min: 0.001 }) * 1000,
      maxAttempts: num(env, "MAX_ATTEMPTS", { min: 1, integer: true }),
      maxBodyBytes: num(env, "MAX_BODY_BYTES", { min: 1, integer: true }),
      defaultLatitude: num(env, "DEFAULT_LATITUDE", { min: -90, max: 90 }),
      defaultLongitude: num(env, "DEFAULT_LONGITUDE", { min: -180, max: 180 }),
      cors: corsOrigins(env),
    };
    // Neither: /healthz said ok while every request was a retryable 503 that never ends.
    if (urls.length === 0 && s.table.fallback === null) {
      throw new ConfigError(
        "no routing table: set ROUTING_TABLE_URLS (the regional gateways) or FALLBACK_TABLE",
      );
    }
    checkRegionsNamed(regionOf, s.table.fallback);
    if (!/^[A-Za-z0-9_.-]+$/.test(s.keyId)) {
      throw new ConfigError(`EDGE_KEY_ID = ${JSON.stringify(s.keyId)}: letters, digits, _ . -`);
    }
    cache.set(env, s);
  }
  return s;
}
