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
 * decision, which upstream in the region, comes as `geogate-region-route`.
 */

import { ConfigError, settings } from "./config.js";
import { errorResponse } from "./errors.js";
import { finalError, tryRegions, upstreamHeaders } from "./proxy.js";
import { Outcome, Reason, regionOrder, route } from "./router.js";
import { clientFields, signClient } from "./sign.js";
import { TableCache, TableError } from "./table.js";

/** @typedef {import("./config.js").Env} Env */
/** @typedef {import("./config.js").Settings} Settings */
/** @typedef {import("./router.js").Region} Region */

const cache = new TableCache(); // one per isolate
const REQUEST_ID = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$/; // the gateway's rule (RFC 9110 token)
const NO_CANDIDATE_RETRY_AFTER_S = "5"; // as the gateway's
const PREFERRED_REGION_HEADER = "geogate-preferred-region"; // gateway/http/headers.py

/** @param {string | null} sent */
export function requestId(sent) {
  return sent !== null && REQUEST_ID.test(sent) ? sent : crypto.randomUUID().replaceAll("-", "");
}

/**
 * The body, up to `limit` bytes (kept whole: a failover sends it again).
 * @param {Request} request @param {number} limit
 * @returns {Promise<ArrayBuffer | "too large">}
 */
async function readBody(request, limit) {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limit || request.body === null) {
    return declared > limit ? "too large" : new ArrayBuffer(0);
  }
  const chunks = [];
  let size = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return "too large";
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out.buffer;
}

/**
 * The model the body names and whether it asks for a stream. A body the Worker cannot read
 * (not JSON, compressed) names none: the request is routed on location alone, and the gateway
 * answers it in its own words.
 * @param {Request} request @param {ArrayBuffer | null} body
 */
function modelOf(request, body) {
  const coding = (request.headers.get("content-encoding") ?? "identity").toLowerCase();
  if (body === null || body.byteLength === 0 || coding !== "identity") {
    return { model: null, stream: false };
  }
  try {
    const doc = JSON.parse(new TextDecoder().decode(body));
    const model = typeof doc?.model === "string" && doc.model ? doc.model : null;
    return { model, stream: doc?.stream === true };
  } catch {
    return { model: null, stream: false };
  }
}

/**
 * Where the client is: request.cf's coordinates (strings, as Cloudflare gives them), or the
 * default location when there are none (a request from inside Cloudflare, a local run).
 * @param {Request} request @param {Settings} s
 */
function clientOf(request, s) {
  const cf = /** @type {Record<string, unknown>} */ (request.cf ?? {});
  const str = (/** @type {string} */ k) =>
    typeof cf[k] === "string" && cf[k] ? String(cf[k]) : null;
  const lat = Number.parseFloat(str("latitude") ?? "");
  const lon = Number.parseFloat(str("longitude") ?? "");
  const located = Number.isFinite(lat) && Number.isFinite(lon);
  return {
    latitude: located ? lat : s.defaultLatitude,
    longitude: located ? lon : s.defaultLongitude,
    country: str("country"),
    continent: str("continent"),
    // What the signed header carries: only what the edge really knows.
    facts: located
      ? {
          ip: request.headers.get("cf-connecting-ip") ?? "",
          latitude: /** @type {string} */ (str("latitude")),
          longitude: /** @type {string} */ (str("longitude")),
          country: str("country"),
          continent: str("continent"),
          city: str("city"),
          colo: str("colo"),
        }
      : null,
  };
}

/**
 * The signed client header for a request to `region`, or null: no secret, no client facts
 * (no request.cf coordinates, no connecting IP), or facts that do not fit the format. Then
 * the gateway locates the client itself (GeoIP on the Worker's address: a poor guess, but
 * the request is served).
 *
 * Signed when the attempt is sent, not when the request came: a failover may start long
 * after (a 522 comes after Cloudflare's connect timeout, a 502 after the gateway's own
 * retries; two of them can pass 30 s), and a gateway believes a `ts` only within its
 * edge.max_skew_s (30 s). workerd's clock moves on at each I/O, so this is the send's time.
 * @param {Settings} s @param {Region} region
 * @param {import("./sign.js").ClientFacts | null} facts
 */
async function signed(s, region, facts) {
  if (!s.secret || !facts?.ip) return null;
  const ts = Math.floor(Date.now() / 1000);
  try {
    return await signClient(s.secret, clientFields(s.keyId, ts, new URL(region.url).host, facts));
  } catch (err) {
    console.warn(JSON.stringify({ msg: "client header not signed", error: String(err) }));
    return null;
  }
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
 * @param {Request} request @param {Env} env @param {ExecutionContext} ctx @param {string} rid
 * @returns {Promise<Response>}
 */
async function serve(request, env, ctx, rid) {
  const url = new URL(request.url);
  if (url.pathname === "/healthz") return new Response("ok");
  if (!url.pathname.startsWith("/v1/")) {
    return errorResponse(
      "unknown_url",
      `${url.pathname} is not an endpoint of this API; the API is under /v1/`,
    );
  }
  const s = settings(env);
  const hasBody = request.method !== "GET" && request.method !== "HEAD";
  const body = hasBody ? await readBody(request, s.maxBodyBytes) : null;
  if (body === "too large") {
    return errorResponse(
      "request_too_large",
      `request body is over this API's limit of ${s.maxBodyBytes} bytes; send a shorter request`,
    );
  }
  const { model, stream } = modelOf(request, body);
  const client = clientOf(request, s);
  const { table, state } = await cache.get(s.table, ctx);
  const decision = route(model, client, table);
  if (decision.outcome === Outcome.MODEL_NOT_FOUND) {
    return errorResponse(
      "model_not_found",
      `model ${JSON.stringify(model)} is not served in any region; GET /v1/models lists ` +
        "the models available",
    );
  }
  const regions = regionOrder(decision, table);
  if (regions.length === 0) {
    const why = [...new Set(decision.excluded.map((e) => e.reason))].sort().join(", ");
    return errorResponse(
      "no_healthy_upstream",
      `no region can serve model ${JSON.stringify(model)} now ` +
        `(${why || "no region has a gateway URL"}). Retry in ${NO_CANDIDATE_RETRY_AFTER_S} s`,
      { "retry-after": NO_CANDIDATE_RETRY_AFTER_S },
    );
  }
  const facts = client.facts;
  const result = await tryRegions(
    {
      method: request.method,
      target: url.pathname + url.search,
      headers: upstreamHeaders(request.headers, rid),
      body: hasBody ? /** @type {ArrayBuffer} */ (body) : null,
      timeoutMs: stream ? s.firstByteMs : s.responseMs,
      signFor: (region) => signed(s, region, facts),
    },
    regions.slice(0, s.maxAttempts),
  );
  if ("failures" in result) {
    return finalError(result.failures, Math.max(0, regions.length - s.maxAttempts));
  }
  const { response, index } = result;
  const headers = new Headers(response.headers);
  const regional = headers.get("geogate-route");
  headers.delete("geogate-route");
  // A regional gateway's hint to a client that came straight to the wrong region. This one
  // entered at the edge, which chose the region: a hint here only means the gateway could
  // not believe our signed header and placed the Worker's own address (as the Python edge
  // gateway, which drops it too).
  headers.delete(PREFERRED_REGION_HEADER);
  if (regional) headers.set("geogate-region-route", regional);
  const colo = client.facts?.colo ?? null;
  headers.set("geogate-route", routeHeader(decision, regions[index], index, state, colo));
  // The body is passed on as a stream: each chunk reaches the client as the gateway sends it.
  return new Response(response.body, { status: response.status, headers });
}

export default {
  /**
   * @param {Request} request @param {Env} env @param {ExecutionContext} ctx
   * @returns {Promise<Response>}
   */
  async fetch(request, env, ctx) {
    const rid = requestId(request.headers.get("x-request-id"));
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
          "retry-after": NO_CANDIDATE_RETRY_AFTER_S,
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
    return response;
  },
};
