// @ts-check
/**
 * geogate's edge tier: a Cloudflare Worker at the PoP nearest each client. It reads where the
 * client is (`request.cf`), picks the region with the Python router's model (src/router.js)
 * over the regional gateways' routing table (src/table.js), and proxies to that region's
 * gateway with the client's IP and location in one signed header (src/sign.js), failing over
 * to the next region while no region can be running the request (src/proxy.js).
 *
 * Response headers: `geogate-route` is the Worker's decision (`tier=edge; region=..;
 * reason=..; table=fresh|stale|fallback[; colo=..][; attempts=N]`); the gateway's own
 * decision, which upstream in the region, comes as `geogate-region-route`. `GET /v1/models`
 * is the Worker's own answer, from every region's table (src/models.js).
 */

import { bodyFacts, readBody } from "./body.js";
import { clientOf, signed } from "./client.js";
import { ConfigError, settings } from "./config.js";
import { allow, allowedOrigin, isPreflight, preflight } from "./cors.js";
import { errorResponse, NO_CANDIDATE_RETRY_AFTER_S } from "./errors.js";
import { isModelList, modelInPath, modelList } from "./models.js";
import { downstreamHeaders, finalError, tryRegions, upstreamHeaders } from "./proxy.js";
import { Outcome, Reason, regionOrder, route } from "./router.js";
import { guardedBody } from "./stream.js";
import { TableCache, TableError } from "./table.js";

/** @typedef {import("./config.js").Env} Env */
/** @typedef {import("./router.js").Region} Region */

const cache = new TableCache(); // one per isolate
const REQUEST_ID = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$/; // the gateway's rule (RFC 9110 token)
const PREFERRED_REGION_HEADER = "geogate-preferred-region"; // gateway/http/headers.py
const CLIENT_GONE_STATUS = 499;

/** @param {string | null} sent */
export function requestId(sent) {
  return sent !== null && REQUEST_ID.test(sent) ? sent : crypto.randomUUID().replaceAll("-", "");
}

/**
 * @param {import("./router.js").Decision} d @param {Region} region @param {number} attempt
 * @param {string} state @param {string | null} colo
 */
function routeHeader(d, region, attempt, state, colo) {
  let h = `tier=edge; region=${region.id}; reason=${attempt === 0 ? d.reason : Reason.FAILOVER}`;
  if (d.residency) h += `; residency=${d.residency}`;
  h += `; table=${state}`;
  if (colo) h += `; colo=${colo}`;
  return attempt ? `${h}; attempts=${attempt + 1}` : h;
}

/**
 * The Worker's own answer when no region can be tried for the request, or null.
 * @param {import("./router.js").Decision} d @param {string | null} model
 * @param {Region[]} regions  the regions to try
 */
function unroutable(d, model, regions) {
  const what = model === null ? "this request" : `model ${JSON.stringify(model)}`;
  const wait = { "retry-after": String(NO_CANDIDATE_RETRY_AFTER_S) };
  if (d.outcome === Outcome.MODEL_NOT_FOUND && model !== null) {
    return errorResponse(
      "model_not_found",
      `${what} is not served in any region; GET /v1/models lists the models available`,
    );
  }
  if (d.outcome === Outcome.MODEL_NOT_FOUND) {
    // A request that names no model, and a table that lists no upstream at all.
    const message = `no region lists an upstream for ${what}`;
    return errorResponse(
      "no_healthy_upstream",
      `${message}. Retry in ${NO_CANDIDATE_RETRY_AFTER_S} s`,
      wait,
    );
  }
  if (regions.length > 0) return null;
  const rule = `residency rule ${d.residency}`;
  const kept = d.outcome === Outcome.NO_CANDIDATE && d.excluded.length > 0;
  if (kept && model !== null && d.excluded.every((e) => e.reason === rule)) {
    // None in the rule's regions serves it, drained or not: refused alike until the table
    // changes, so not a 503 whose Retry-After the SDKs wait out (the gateway's 403). Not for
    // a decision routed to regions with no gateway URL: that is the table's to mend.
    return errorResponse(
      "model_not_available_in_region",
      `${what} is not served to clients here: ${rule} keeps them in ` +
        "its regions, and no upstream there serves it; ask the operator for the model in one " +
        "of those regions",
    );
  }
  const why = [...new Set(d.excluded.map((e) => e.reason))].sort().join(", ");
  return errorResponse(
    "no_healthy_upstream",
    `no region can serve ${what} now (${why || "no region has a gateway URL"}). ` +
      `Retry in ${NO_CANDIDATE_RETRY_AFTER_S} s`,
    wait,
  );
}

/**
 * The gateway's response as the client gets it: its own route header renamed, the Worker's
 * added, the body passed on as a stream (each chunk reaches the client as the gateway sends
 * it; an event stream whole events at a time, and a cut one ends with an error event:
 * stream.js).
 * @param {Response} response @param {string} route  the Worker's geogate-route
 * @param {string} region  the region whose gateway answered
 */
function relayed(response, route, region) {
  const headers = downstreamHeaders(response.headers);
  const regional = headers.get("geogate-route");
  headers.delete("geogate-route");
  // A regional gateway's hint to a client that came straight to the wrong region. This one
  // entered at the edge, which chose the region: a hint here only means the gateway could
  // not believe our signed header and placed the Worker's own address (as the Python edge
  // gateway, which drops it too).
  headers.delete(PREFERRED_REGION_HEADER);
  if (regional) headers.set("geogate-region-route", regional);
  headers.set("geogate-route", route);
  // An event stream only: another body gains nothing visible from it in workerd (it ends a
  // cut body cleanly either way), and a JavaScript pass per chunk cost several times the CPU
  // of workerd's own pipe (in a review's scratch run).
  const sse = (headers.get("content-type") ?? "").toLowerCase().startsWith("text/event-stream");
  const body = sse ? guardedBody(response.body, `region ${region}'s gateway`) : response.body;
  return new Response(body, { status: response.status, headers });
}

/**
 * @param {Request} request @param {Env} env @param {ExecutionContext} ctx @param {string} rid
 * @returns {Promise<Response>}
 */
async function serve(request, env, ctx, rid) {
  const url = new URL(request.url);
  // Read first, for /healthz too: a misconfigured Worker is not healthy.
  const s = settings(env);
  if (url.pathname === "/healthz") return new Response("ok");
  if (!url.pathname.startsWith("/v1/")) {
    return errorResponse(
      "unknown_url",
      `${url.pathname} is not an endpoint of this API; the API is under /v1/`,
    );
  }
  const lookup = request.method === "GET" || request.method === "HEAD";
  if (lookup && isModelList(url.pathname)) {
    const { table, state } = await cache.get(s.table, ctx);
    const headers = { "geogate-route": `tier=edge; table=${state}` };
    return modelList(table, clientOf(request, s), request.method, headers);
  }
  const body = lookup ? null : await readBody(request, s.maxBodyBytes);
  const facts = body === "too large" ? body : await bodyFacts(request, body, s.maxBodyBytes);
  if (body === "too large" || facts === "too large") {
    const what = body === "too large" ? "request body is" : "request body decodes to";
    return errorResponse(
      "request_too_large",
      `${what} over this API's limit of ${s.maxBodyBytes} bytes; send a shorter request`,
    );
  }
  const model = (lookup ? modelInPath(url.pathname) : null) ?? facts.model;
  const client = clientOf(request, s);
  const { table, state } = await cache.get(s.table, ctx);
  const decision = route(model, client, table);
  const regions = regionOrder(decision, table);
  const refused = unroutable(decision, model, regions);
  if (refused) return refused;
  const result = await tryRegions(
    {
      method: request.method,
      target: url.pathname + url.search,
      headers: upstreamHeaders(request.headers, rid, url.protocol.slice(0, -1)),
      body,
      timeoutMs: facts.stream ? s.firstByteMs : s.responseMs,
      signFor: (region) => signed(s, region, client.facts),
      // A client gone before the region's response head: workerd cancels a request's fetches
      // itself only once no waitUntil() work is left (a background table read, up to
      // TABLE_TIMEOUT_S), and until then the region generated for nobody. Aborted only with
      // wrangler.jsonc's enable_request_signal.
      gone: request.signal,
    },
    regions.slice(0, s.maxAttempts),
  );
  // nginx's "client closed request", as the gateway's: nobody reads it, the logs do.
  if ("gone" in result) return new Response(null, { status: CLIENT_GONE_STATUS });
  if ("failures" in result) {
    const untried = Math.max(0, regions.length - s.maxAttempts);
    return finalError(result.failures, untried, decision.reason === Reason.PANIC);
  }
  const { response, index } = result;
  const colo = client.facts?.colo ?? null;
  const region = regions[index];
  return relayed(response, routeHeader(decision, region, index, state, colo), region.id);
}

/** @param {Env} env */
function settingsOrNull(env) {
  try {
    return settings(env);
  } catch {
    return null;
  }
}

export default {
  /**
   * @param {Request} request @param {Env} env @param {ExecutionContext} ctx
   * @returns {Promise<Response>}
   */
  async fetch(request, env, ctx) {
    const rid = requestId(request.headers.get("x-request-id"));
    // A setting that cannot be read is serve's to say (edge_misconfigured), without CORS.
    const cors = settingsOrNull(env)?.cors ?? null;
    const origin = allowedOrigin(request, cors);
    if (origin !== null && cors !== null && isPreflight(request)) {
      return preflight(request, origin, cors);
    }
    let response;
    try {
      response = await serve(request, env, ctx, rid);
    } catch (err) {
      if (err instanceof ConfigError) {
        const message = `the edge Worker is misconfigured: ${err.message}`;
        response = errorResponse("edge_misconfigured", message);
      } else if (err instanceof TableError) {
        const message = `${err.message}. Retry in ${NO_CANDIDATE_RETRY_AFTER_S} s`;
        response = errorResponse("no_healthy_upstream", message, {
          "retry-after": String(NO_CANDIDATE_RETRY_AFTER_S),
        });
      } else {
        console.error(JSON.stringify({ msg: "unexpected error", rid, error: String(err) }));
        response = errorResponse(
          "internal_error",
          `internal error in the edge Worker (request id ${rid}); retry, and report the ` +
            "request id if it persists",
        );
      }
    }
    // Every response here was built by the Worker, so its headers can still be changed.
    response.headers.set("x-request-id", rid);
    if (origin !== null && cors !== null) allow(response.headers, origin, cors);
    return response;
  },
};
