// @ts-check
/**
 * Where the client is, from request.cf, and the signed header that tells its region's gateway
 * (src/sign.js): the IP Cloudflare saw and that location.
 */

import { CONTINENT_POINTS, COUNTRY_POINTS } from "./points.js";
import { clientFields, signClient } from "./sign.js";

/** @typedef {import("./config.js").Settings} Settings */
/** @typedef {import("./router.js").Region} Region */
/** @typedef {import("./sign.js").ClientFacts} ClientFacts */

/**
 * @typedef {object} Client  the router's Client, and what the signed header carries
 * @property {number} latitude
 * @property {number} longitude
 * @property {string | null} country
 * @property {string | null} continent
 * @property {ClientFacts | null} facts  null: nothing known of the client but the default
 */

/**
 * A country's or else a continent's reference point, as the gateway places a client that its
 * GeoIP knows only by country (geodb/reader.py): the continent is Cloudflare's, else the
 * country's.
 * @param {string | null} country @param {string | null} continent
 * @returns {{latitude: number, longitude: number, continent: string | null} | null}
 */
export function referencePoint(country, continent) {
  const c = country?.toUpperCase() ?? "";
  if (Object.hasOwn(COUNTRY_POINTS, c)) {
    const [its, latitude, longitude] = COUNTRY_POINTS[c];
    return { latitude, longitude, continent: continent ?? its };
  }
  const k = continent?.toUpperCase() ?? "";
  if (Object.hasOwn(CONTINENT_POINTS, k)) {
    const [latitude, longitude] = CONTINENT_POINTS[k];
    return { latitude, longitude, continent };
  }
  return null;
}

// A country GeoIP names that has no ISO code: Kosovo, as MaxMind writes it (geodb/countries.py).
const EXTRA_COUNTRIES = new Set(["XK"]);

/**
 * The code as a country (upper case), or null for one that names none.
 * @param {string | null} code
 * @returns {string | null}
 */
function knownCountry(code) {
  const c = code?.toUpperCase() ?? "";
  return Object.hasOwn(COUNTRY_POINTS, c) || EXTRA_COUNTRIES.has(c) ? c : null;
}

/**
 * The country's continent (geodb/data/countries.csv), or null for a code it does not know.
 * @param {string | null} country
 * @returns {string | null}
 */
export function continentOf(country) {
  const c = country?.toUpperCase() ?? "";
  return Object.hasOwn(COUNTRY_POINTS, c) ? COUNTRY_POINTS[c][0] : null;
}

/**
 * Where the client is: request.cf's coordinates (strings, as Cloudflare gives them); without
 * them (Cloudflare has a country for nearly every address, coordinates for fewer) its
 * country's or continent's point; with none of these (a request from inside Cloudflare, a
 * local run) the default location, and no facts: the gateway then locates the client itself.
 * @param {Request} request @param {Settings} s
 * @returns {Client}
 */
export function clientOf(request, s) {
  const cf = /** @type {Record<string, unknown>} */ (request.cf ?? {});
  const str = (/** @type {string} */ k) =>
    typeof cf[k] === "string" && cf[k] ? String(cf[k]) : null;
  // A code that is no country or continent (Cloudflare's T1 for Tor, XX for unknown) is
  // none: taken as one it matched no residency rule here or at the gateway, which fills what
  // is missing from its GeoIP (gateway/runtime.py).
  const country = knownCountry(str("country"));
  const lat = Number.parseFloat(str("latitude") ?? "");
  const lon = Number.parseFloat(str("longitude") ?? "");
  const located = Number.isFinite(lat) && Number.isFinite(lon);
  const given = str("continent")?.toUpperCase() ?? null;
  const known = given !== null && Object.hasOwn(CONTINENT_POINTS, given) ? given : null;
  const point = located ? null : referencePoint(country, known);
  // Coordinates without a continent: the country's (a continents-only residency rule matched
  // no such client here, where the gateway, which derives it, did).
  const continent = point ? point.continent : (known ?? continentOf(country));
  if (!located && point === null) {
    const [latitude, longitude] = [s.defaultLatitude, s.defaultLongitude];
    return { latitude, longitude, country, continent, facts: null };
  }
  const where = point ?? { latitude: lat, longitude: lon };
  return {
    latitude: where.latitude,
    longitude: where.longitude,
    country,
    continent,
    // What the signed header carries: what the edge knows, the coordinates as Cloudflare
    // wrote them (the gateway reads the same digits), or the reference point.
    facts: {
      ip: request.headers.get("cf-connecting-ip") ?? "",
      latitude: located ? /** @type {string} */ (str("latitude")) : String(where.latitude),
      longitude: located ? /** @type {string} */ (str("longitude")) : String(where.longitude),
      country,
      continent,
      city: str("city"),
      colo: str("colo"),
    },
  };
}

/**
 * The signed client header for a request to `region`, or null: no secret, no client facts
 * (no location in request.cf, no connecting IP), or facts that do not fit the format. Then
 * the gateway locates the client itself (GeoIP on the Worker's address: a poor guess, but
 * the request is served).
 *
 * Signed when the attempt is sent, not when the request came: a failover may start long
 * after (a 522 comes after Cloudflare's connect timeout, a 502 after the gateway's own
 * retries; two of them can pass 30 s), and a gateway believes a `ts` only within its
 * edge.max_skew_s (30 s). workerd's clock moves on at each I/O, so this is the send's time.
 * @param {Settings} s @param {Region} region @param {ClientFacts | null} facts
 */
export async function signed(s, region, facts) {
  if (!s.secret || !facts?.ip) return null;
  const ts = Math.floor(Date.now() / 1000);
  try {
    return await signClient(s.secret, clientFields(s.keyId, ts, new URL(region.url).host, facts));
  } catch (err) {
    console.warn(JSON.stringify({ msg: "client header not signed", error: String(err) }));
    return null;
  }
}
