// @ts-check
/**
 * `/v1/models` through the Worker. A region's gateway lists only the models of its own
 * snapshot (in a fleet without shared state, its own region's), so the Worker answers the list
 * itself, from the merged table of every region, in the gateway's shape
 * (gateway/http/endpoints.py); `/v1/models/{id}` is routed as a request for model `id`, so it
 * reaches a region that serves it.
 */

import { route } from "./router.js";

/** @typedef {import("./router.js").Table} Table */
/** @typedef {import("./router.js").Client} Client */

const LIST = "/v1/models";
const ONE = "/v1/models/";

/**
 * What `GET /v1/models` lists for `client`: the models the router would send its request for
 * to a healthy upstream (not drained: a weight-0 standby too) in a region the Worker can send
 * to (it has a URL), residency rules included, as the gateway's list (gateway/http/
 * endpoints.py `models`). Without the rule a client whose rule keeps it from the only region
 * serving a model saw it listed, and its request for it was a 503 here. Sorted, as the
 * gateway's.
 * @param {Table} table @param {Client} client
 * @returns {string[]}
 */
export function servedModels(table, client) {
  /** @type {Set<string>} */
  const ids = new Set();
  for (const u of table.upstreams) for (const m of u.models) ids.add(m);
  return [...ids].sort().filter((model) =>
    // A panic's candidates may all be unhealthy: such a model is not listed, as the gateway's.
    route(model, client, table, () => 0).order.some(
      (c) => c.healthy && Boolean(table.regions.get(c.upstream.region)?.url),
    ),
  );
}

/**
 * The model `/v1/models/{id}` names (percent-decoded, as the gateway's router decodes it; a
 * name may hold "/"), or null for any other path.
 * @param {string} pathname
 * @returns {string | null}
 */
export function modelInPath(pathname) {
  if (!pathname.startsWith(ONE) || pathname.length === ONE.length) return null;
  const raw = pathname.slice(ONE.length);
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw; // a stray "%": the name as sent
  }
}

/** @param {string} pathname */
export function isModelList(pathname) {
  return pathname === LIST;
}

/**
 * The Worker's own answer to `GET` (or `HEAD`) `/v1/models` for `client`.
 * @param {Table} table @param {Client} client @param {string} method
 * @param {Record<string, string>} headers
 */
export function modelList(table, client, method, headers) {
  // "created": now, as vLLM's cards have it (the Worker knows no better time); 0 read as 1970.
  const created = Math.floor(Date.now() / 1000);
  const data = servedModels(table, client).map((id) => ({
    id,
    object: "model",
    created,
    owned_by: "geogate",
  }));
  const body = method === "HEAD" ? null : JSON.stringify({ object: "list", data });
  return new Response(body, { headers: { "content-type": "application/json", ...headers } });
}
