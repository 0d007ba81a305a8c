// @ts-check
/**
 * Distance and the network-RTT model for paths nobody has measured: geodb/distance.py in
 * JavaScript, term for term, so the Worker scores a region as the Python router does
 * (edge/test/route-cases.json holds both to that).
 */

export const EARTH_RADIUS_KM = 6371.0088; // IUGG mean radius
export const RTT_FIXED_MS = 10.0; // fitted intercept
export const RTT_MS_PER_KM = 0.0153; // fitted slope
export const FIBRE_FLOOR_MS_PER_KM = 0.01; // light in glass, round trip

const RADIANS = Math.PI / 180; // CPython's math.radians multiplies by pi / 180 too

/**
 * Haversine distance in km.
 * @param {number} lat1 @param {number} lon1 @param {number} lat2 @param {number} lon2
 */
export function greatCircleKm(lat1, lon1, lat2, lon2) {
  const p1 = lat1 * RADIANS;
  const p2 = lat2 * RADIANS;
  const dp = p2 - p1;
  const dl = (lon2 - lon1) * RADIANS;
  const sdp = Math.sin(dp / 2);
  const sdl = Math.sin(dl / 2);
  // Grouped as Python groups `sin(dp/2)**2 + cos(p1)*cos(p2)*sin(dl/2)**2`: same rounding.
  const a = sdp * sdp + Math.cos(p1) * Math.cos(p2) * (sdl * sdl);
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(a)));
}

/**
 * Estimated round-trip time between two points, never under the physical floor.
 * @param {number} lat1 @param {number} lon1 @param {number} lat2 @param {number} lon2
 */
export function estRttMs(lat1, lon1, lat2, lon2) {
  const km = greatCircleKm(lat1, lon1, lat2, lon2);
  return Math.max(RTT_FIXED_MS + RTT_MS_PER_KM * km, FIBRE_FLOOR_MS_PER_KM * km);
}
