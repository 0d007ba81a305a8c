// @ts-check
/**
 * CORS for browser apps, only where CORS_ORIGINS names the origins allowed (or "*"), as a
 * gateway's server.cors_origins does: a browser sends a JSON POST with Authorization only
 * after a preflight (OPTIONS with Access-Control-Request-Method), answered here, 204, never
 * sent on to a region; every other answer to an allowed origin carries
 * Access-Control-Allow-Origin, with the headers a client reads exposed. Another origin gets
 * the answers it got before, which a browser takes as a refusal. No credentials (cookies):
 * the API's is a bearer token.
 */

export const PREFLIGHT_MAX_AGE_S = 600; // how long a browser may keep a preflight's answer
const MAX_REQUESTED_HEADERS = 1024; // characters of Access-Control-Request-Headers echoed
const METHODS = "GET, POST, OPTIONS";
// x-should-retry: unexposed, a browser's SDK reads its "false" as absent and retries a 504
// twice, running a generation again.
const EXPOSED = "x-request-id, retry-after, x-should-retry, geogate-route, geogate-region-route";

/** @typedef {{any: boolean, origins: Set<string>}} CorsOrigins */

export class OriginError extends Error {}

/**
 * CORS_ORIGINS: a JSON list or text with commas; empty: no CORS.
 * @param {unknown} raw @returns {CorsOrigins | null}
 */
export function parseOrigins(raw) {
  if (raw === undefined || raw === "") return null;
  const want = 'want ["https://app.example.com", ...], or "*" for any';
  /** @type {unknown} */
  let list = raw;
  if (typeof raw === "string") {
    const text = raw.trim();
    try {
      list = text.startsWith("[") ? JSON.parse(text) : text.split(",");
    } catch {
      throw new OriginError(`not JSON; ${want}`);
    }
  }
  if (!Array.isArray(list)) throw new OriginError(want);
  const origins = new Set();
  let any = false;
  for (const item of list) {
    if (typeof item !== "string") throw new OriginError(`${JSON.stringify(item)}: ${want}`);
    const value = item.trim().replace(/\/$/, "");
    if (value === "*") any = true;
    else if (value) origins.add(checkedOrigin(value));
  }
  return any || origins.size ? { any, origins } : null;
}

/** @param {string} value @returns {string} */
function checkedOrigin(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    url = null;
  }
  const ok = url !== null && /^https?:$/.test(url.protocol);
  // A path, credentials or a default port make it no origin a browser sends.
  if (!ok || url === null || url.origin.toLowerCase() !== value.toLowerCase()) {
    throw new OriginError(
      `${JSON.stringify(value)}: an origin is scheme://host[:port] as a browser sends it, ` +
        'without a path or credentials (or "*" for any)',
    );
  }
  return url.origin.toLowerCase();
}

/**
 * The request's Origin where it is allowed, else null.
 * @param {Request} request @param {CorsOrigins | null} allowed @returns {string | null}
 */
export function allowedOrigin(request, allowed) {
  const origin = request.headers.get("origin");
  if (allowed === null || origin === null) return null;
  return allowed.any || allowed.origins.has(origin.toLowerCase()) ? origin : null;
}

/** @param {Request} request */
export function isPreflight(request) {
  return request.method === "OPTIONS" && request.headers.has("access-control-request-method");
}

/**
 * @param {Request} request @param {string} origin @param {CorsOrigins} allowed
 * @returns {Response}
 */
export function preflight(request, origin, allowed) {
  const headers = new Headers({
    "access-control-allow-methods": METHODS,
    "access-control-max-age": String(PREFLIGHT_MAX_AGE_S),
  });
  const requested = request.headers.get("access-control-request-headers");
  if (requested && requested.length <= MAX_REQUESTED_HEADERS) {
    headers.set("access-control-allow-headers", requested);
  }
  allow(headers, origin, allowed);
  return new Response(null, { status: 204, headers });
}

/**
 * An answer's headers for an allowed origin (a response the Worker built: still changeable).
 * @param {Headers} headers @param {string} origin @param {CorsOrigins} allowed
 */
export function allow(headers, origin, allowed) {
  headers.set("access-control-allow-origin", allowed.any ? "*" : origin);
  headers.append("vary", "origin");
  headers.set("access-control-expose-headers", EXPOSED);
}
