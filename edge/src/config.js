// @ts-check
/**
 * The Worker's settings: wrangler.jsonc's `vars` and the secrets (`wrangler secret put`),
 * each with a named default and the reason for it.
 */

import { normalizeTable, TableError } from "./table.js";

/**
 * @typedef {object} Env
 * @property {string | string[]} [ROUTING_TABLE_URLS]  the gateways' ops /routing-table URLs
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
  RESPONSE_TIMEOUT_S: 605, // non-streaming: the whole answer comes at once
  MAX_ATTEMPTS: 3, // the nearest region, then a second, then a third (as retry.max_attempts)
  MAX_BODY_BYTES: 4 * 1024 * 1024, // the gateway's server.max_body_bytes: kept for failover
  DEFAULT_LATITUDE: 50.11, // where a request without request.cf coordinates is routed from:
  DEFAULT_LONGITUDE: 8.68, // Frankfurt, the gateway's geoip.default
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
 */

/**
 * @param {Env} env @param {keyof typeof DEFAULTS} name
 * @param {{min?: number, max?: number, integer?: boolean}} [bounds]
 */
function num(env, name, bounds = {}) {
  const raw = env[name];
  if (raw === undefined || raw === "") return /** @type {number} */ (DEFAULTS[name]);
  const v = Number(raw);
  const { min = 0, max = Infinity, integer = false } = bounds;
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new ConfigError(
      `${name} = ${JSON.stringify(raw)}: want a ${integer ? "whole " : ""}number from ${min}` +
        (max === Infinity ? " up" : ` to ${max}`),
    );
  }
  return v;
}

/** @param {Env} env */
function sources(env) {
  const raw = env.ROUTING_TABLE_URLS ?? [];
  let list = raw;
  if (typeof raw === "string") {
    try {
      list = raw.trim().startsWith("[") ? JSON.parse(raw) : raw.split(",");
    } catch {
      throw new ConfigError("ROUTING_TABLE_URLS: not a JSON list; want [\"https://...\", ...]");
    }
  }
  if (!Array.isArray(list) || !list.every((u) => typeof u === "string")) {
    throw new ConfigError("ROUTING_TABLE_URLS: want a list of URLs");
  }
  const urls = list.map((u) => u.trim()).filter(Boolean);
  for (const u of urls) {
    if (!/^https?:\/\/[^/]+/.test(u)) {
      throw new ConfigError(`ROUTING_TABLE_URLS: ${u} is not a URL`);
    }
  }
  return urls;
}

/** @param {Env} env */
function fallback(env) {
  const raw = env.FALLBACK_TABLE;
  if (raw === undefined || raw === "") return null;
  try {
    return normalizeTable(typeof raw === "string" ? JSON.parse(raw) : raw);
  } catch (err) {
    const why = err instanceof TableError || err instanceof SyntaxError ? err.message : String(err);
    throw new ConfigError(`FALLBACK_TABLE: ${why}`);
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
    s = {
      table: {
        sources: sources(env),
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
    };
    if (!/^[A-Za-z0-9_.-]+$/.test(s.keyId)) {
      throw new ConfigError(`EDGE_KEY_ID = ${JSON.stringify(s.keyId)}: letters, digits, _ . -`);
    }
    cache.set(env, s);
  }
  return s;
}
