// @ts-check
/**
 * The signed client location the regional gateway believes (geodb/edge.py verifies it):
 *
 *   geogate-client: v1;kid=k1;ts=<unix s>;aud=<gateway host>;ip=<client IP>;lat=..;lon=..;
 *                   country=..;continent=..;city=<percent-encoded>;colo=..;sig=<base64url>
 *
 * one line; `sig` is HMAC-SHA256 with the shared secret over everything before `;sig=`.
 */

export const HEADER = "geogate-client";
const VALUE = /^[^;=\s]+$/; // a field's value: one word without the separators
const encoder = new TextEncoder();
/** @type {Map<string, Promise<CryptoKey>>} */
const keys = new Map();

/**
 * encodeURIComponent, plus the five characters it leaves alone that Python's
 * `quote(safe="")` encodes: both sides then write the same bytes for the same city.
 * @param {string} s
 */
export function percentEncode(s) {
  return encodeURIComponent(s).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** @param {ArrayBuffer} buf */
function base64url(buf) {
  let bin = "";
  for (const b of new Uint8Array(buf)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** @param {string} secret */
function hmacKey(secret) {
  let key = keys.get(secret);
  if (key === undefined) {
    key = crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    keys.set(secret, key);
  }
  return key;
}

/**
 * The header value for `fields`, in order; `city` is percent-encoded here. Throws on a value
 * that is empty or holds `;`, `=` or white space.
 * @param {string} secret
 * @param {[string, string][]} fields
 */
export async function signClient(secret, fields) {
  const parts = ["v1"];
  for (const [name, value] of fields) {
    const text = name === "city" ? percentEncode(value) : value;
    if (!VALUE.test(text)) throw new Error(`edge header field ${name}=${JSON.stringify(value)}`);
    parts.push(`${name}=${text}`);
  }
  const signed = parts.join(";");
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(signed));
  return `${signed};sig=${base64url(mac)}`;
}

/**
 * @typedef {object} ClientFacts  what the edge knows of the client
 * @property {string} ip
 * @property {string} latitude    as request.cf gives it (a decimal string)
 * @property {string} longitude
 * @property {string | null} country
 * @property {string | null} continent
 * @property {string | null} city
 * @property {string | null} colo
 */

/**
 * The fields for one request to the gateway at `audience` (its host[:port]); optional facts
 * that do not fit a header word are left out rather than failing the request.
 * @param {string} keyId @param {number} ts @param {string} audience @param {ClientFacts} c
 * @returns {[string, string][]}
 */
export function clientFields(keyId, ts, audience, c) {
  /** @type {[string, string][]} */
  const fields = [
    ["kid", keyId],
    ["ts", String(ts)],
    ["aud", audience],
    ["ip", c.ip],
    ["lat", c.latitude],
    ["lon", c.longitude],
  ];
  /** @type {[string, string | null][]} */
  const optional = [
    ["country", c.country],
    ["continent", c.continent],
    ["city", c.city ? percentEncode(c.city) : null],
    ["colo", c.colo],
  ];
  for (const [name, value] of optional) {
    if (value && VALUE.test(value)) fields.push([name, name === "city" ? c.city ?? "" : value]);
  }
  return fields;
}
