// @ts-check
/**
 * Send the request to the chosen region's gateway; fail over to the next region only while
 * no region can be running it, and before the first byte reached the client: a connect error,
 * a status that says "not taken" (429/502/503, Cloudflare's 52x for an origin it could not
 * reach). Never after the request may have started: no response headers within the timeout
 * (ours, or Cloudflare's 524) is a 504, since the region may still be generating a completion
 * that is not idempotent; and never once the response started: its body is handed to the
 * client as a stream, chunk by chunk as the gateway sends it.
 */

import { errorResponse, NO_CANDIDATE_RETRY_AFTER_S } from "./errors.js";

// "This region cannot take it now, another may": the gateway's own RETRYABLE_STATUS, and the
// 52x Cloudflare answers a subrequest with when the origin is down: in production a refused
// or timed-out connection to a gateway comes back as one of these, not as a thrown error.
// 520 unknown error (an empty or reset answer), 521 connection refused, 522 connect timeout,
// 523 origin unreachable, 525 TLS handshake failed, 526 invalid certificate, 530 origin DNS
// error: the gateway either never got the request or its connection died with no answer
// (what a thrown connect error is too).
export const RETRYABLE_STATUS = new Set([429, 502, 503, 520, 521, 522, 523, 525, 526, 530]);
// Cloudflare's "connected, sent the request, no response headers in time" (100 s): our own
// first-byte timeout by another hand, so not retryable: the region may still be running it.
export const TIMEOUT_STATUS = 524;
// RFC 9110 §7.6.1 connection-specific fields; a fetch sets host and content-length itself.
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];
// What the client says of itself or of the request at the edge: the Worker is the proxy that
// knows the client (Cloudflare's CF-Connecting-IP), so these are its to make, as the gateway
// makes them for a peer it does not trust (gateway/http/headers.py _EDGE_CLAIMS). Passed on,
// a gateway that trusts Cloudflare's addresses (gateway.trusted_proxies) took a client's
// `X-Forwarded-For: 6.6.6.6` as the client whenever it did not believe the signed header (no
// EDGE_SECRET, no location, a key being rotated): its location and residency rule were the
// client's choice, and the rest reached its backends as claims vouched for.
const CLIENT_CLAIMS = new Set([
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-real-ip",
  "forwarded",
  "x-forwarded-host",
  "x-forwarded-port",
  "x-forwarded-prefix",
  "x-forwarded-server",
  "x-forwarded-uri",
  "x-forwarded-ssl",
  "x-forwarded-scheme",
  "front-end-https",
  "x-host",
  "client-ip",
  "x-envoy-external-address",
  "true-client-ip",
  "x-client-ip",
  "x-cluster-client-ip",
  "fastly-client-ip",
  "x-original-forwarded-for",
  "x-original-url",
  "x-rewrite-url",
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
]);
const MAX_DETAIL = 300; // characters of a gateway's error message repeated in ours
// A refusal's body is read for its message only (the status already decided the failover):
// this much of it, for at most this long. A gateway, or a box in front of one, that sent a
// 503's headers and then stalled its body held the request there for good (the first-byte
// timer ends with the headers), and a huge one was read whole.
const MAX_DETAIL_BYTES = 16 * 1024;
const DETAIL_WAIT_MS = 1000;

/**
 * @typedef {import("./router.js").Region} Region
 *
 * @typedef {object} Failure
 * @property {string} region
 * @property {string} what
 * @property {number | null} status
 * @property {string | null} retryAfter
 * @property {boolean} timedOut  no response headers in time: the region may have the request
 *
 * @typedef {object} Attempts
 * @property {string} method
 * @property {string} target        path and query, as the client sent them
 * @property {Headers} headers      the client's, less hop-by-hop fields
 * @property {ArrayBuffer | null} body
 * @property {number} timeoutMs     for the response headers
 * @property {(region: Region) => Promise<string | null>} signFor  the signed client header
 * @property {AbortSignal} [gone]  aborted when the client went away (its `request.signal`)
 */

/**
 * The client's headers as a gateway should get them. The client's own `geogate-client` is a
 * forgery by definition: only ours is sent. Cloudflare's `cf-*` headers describe this hop:
 * what the gateway needs of them is in the signed header, and Cloudflare adds its own to the
 * subrequest. The client's claims about itself (CLIENT_CLAIMS, spelt with `_` too, as a CGI
 * or WSGI backend reads them alike) are replaced by the Worker's: `X-Forwarded-For` is the
 * address Cloudflare saw (none when it gave none), `X-Forwarded-Proto` the client's scheme.
 * @param {Headers} incoming @param {string} requestId @param {string} [scheme]  "https", "http"
 */
export function upstreamHeaders(incoming, requestId, scheme = "https") {
  const ip = incoming.get("cf-connecting-ip");
  const out = withoutHopByHop(incoming);
  const drop = [...out.keys()].filter(
    (k) => k.startsWith("cf-") || CLIENT_CLAIMS.has(k.replaceAll("_", "-")),
  );
  for (const name of [...drop, "host", "content-length", "geogate-client"]) out.delete(name);
  if (ip) out.set("x-forwarded-for", ip);
  out.set("x-forwarded-proto", scheme);
  out.set("x-request-id", requestId);
  return out;
}

/**
 * A gateway's response headers as the client should get them: the fields of the Worker's
 * connection to the gateway, and those its Connection header names, describe that hop only
 * (RFC 9110 §7.6.1), as the client's do on the way in.
 * @param {Headers} incoming
 */
export function downstreamHeaders(incoming) {
  return withoutHopByHop(incoming);
}

/** @param {Headers} incoming */
function withoutHopByHop(incoming) {
  const out = new Headers(incoming);
  const named = (out.get("connection") ?? "").split(",").map((t) => t.trim().toLowerCase());
  for (const name of [...HOP_BY_HOP, ...named]) if (name) out.delete(name);
  return out;
}

/**
 * The message of a refusal's JSON body, or "": at most MAX_DETAIL_BYTES of it, read for at
 * most DETAIL_WAIT_MS; the rest is cancelled.
 * @param {Response} resp
 */
async function errorDetail(resp) {
  const reader = resp.body?.getReader();
  if (!reader) return "";
  const stop = () => reader.cancel().catch(() => {}); // a pending read then ends: done
  const timer = setTimeout(stop, DETAIL_WAIT_MS);
  /** @type {Uint8Array[]} */
  const chunks = [];
  let size = 0;
  try {
    while (size < MAX_DETAIL_BYTES) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    return "";
  } finally {
    clearTimeout(timer);
    await stop();
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  const text = new TextDecoder().decode(bytes);
  try {
    const doc = JSON.parse(text);
    const msg = doc?.error?.message;
    return typeof msg === "string" ? msg.slice(0, MAX_DETAIL) : text.slice(0, MAX_DETAIL);
  } catch {
    return ""; // not JSON (Cloudflare's HTML page), or cut short: nothing worth repeating
  }
}

/**
 * Try `regions` in order, until one answers, or one may be running the request (a timeout:
 * then the failures end with it, `timedOut`), or the client went away (`gone`: no region is
 * asked after that, and the one being asked is cancelled).
 * @param {Attempts} a @param {Region[]} regions
 * @returns {Promise<{response: Response, index: number} | {failures: Failure[]} | {gone: true}>}
 */
export async function tryRegions(a, regions) {
  /** @type {Failure[]} */
  const failures = [];
  for (const [index, region] of regions.entries()) {
    if (a.gone?.aborted) return { gone: true };
    const headers = new Headers(a.headers);
    const signed = await a.signFor(region); // signed now, for this attempt
    if (signed) headers.set("geogate-client", signed);
    const abort = new AbortController();
    // A gateway whose client left stops generating only when its connection closes, and a
    // cancelled fetch is what closes it. The client's signal cannot be the fetch's own:
    // workerd drops an incoming request's signal from a subrequest (unless
    // request_signal_passthrough), so the attempt's follows it.
    const follow = () => abort.abort();
    a.gone?.addEventListener("abort", follow, { once: true });
    if (a.gone?.aborted) abort.abort(); // gone while this attempt was signed: no event now
    try {
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        abort.abort();
      }, a.timeoutMs);
      /** @type {Response} */
      let resp;
      try {
        resp = await fetch(region.url + a.target, {
          method: a.method,
          headers,
          body: a.body,
          redirect: "manual",
          signal: abort.signal,
        });
      } catch (err) {
        if (a.gone?.aborted) return { gone: true }; // not the region's failure: no failover
        const what = timedOut
          ? `no response in ${a.timeoutMs / 1000} s`
          : `connect error: ${err instanceof Error ? err.message : err}`;
        failures.push({ region: region.id, what, status: null, retryAfter: null, timedOut });
        // The gateway may have the whole request and be working on it: sending it to another
        // region could run a completion twice (and bill it twice). A gateway Cloudflare cannot
        // connect to is a 522 long before this timeout, and fails over below.
        if (timedOut) break;
        continue;
      } finally {
        // Only the wait for the headers is bounded here: the body streams for as long as the
        // gateway's own idle and total timeouts allow.
        clearTimeout(timer);
      }
      if (resp.status === TIMEOUT_STATUS) {
        await resp.body?.cancel();
        const what = `HTTP ${resp.status}: Cloudflare had no response in time`;
        const status = resp.status;
        failures.push({ region: region.id, what, status, retryAfter: null, timedOut: true });
        break; // as for our own timeout
      }
      if (RETRYABLE_STATUS.has(resp.status)) {
        const detail = await errorDetail(resp);
        failures.push({
          region: region.id,
          what: `HTTP ${resp.status}${detail ? `: ${detail}` : ""}`,
          status: resp.status,
          retryAfter: resp.headers.get("retry-after"),
          timedOut: false,
        });
        continue;
      }
      return { response: resp, index };
    } finally {
      // Once answered, the body is the client's: one that leaves cancels it (stream.js),
      // which closes the connection. workerd aborts request.signal then too, while an event
      // stream is relayed, and an aborted read would log a cut for a client gone.
      a.gone?.removeEventListener("abort", follow);
    }
  }
  return { failures };
}

/**
 * A Retry-After's seconds from now (RFC 9110 10.2.3: digits or an HTTP date), null where it
 * is neither, as the gateway's wait_s reads it: a balancer or CDN in front of a gateway may
 * send a date. Digits as a BigInt, of any size. Date.parse alone is too lenient ("1" is the
 * year 2001), so a date must have a day's name and a time of day.
 * @param {string} value @returns {bigint | null}
 */
function waitOf(value) {
  if (/^\d+$/.test(value)) return BigInt(value);
  if (!/[A-Za-z]{3}/.test(value) || !/\d{2}:\d{2}:\d{2}/.test(value)) return null;
  const when = Date.parse(value);
  if (Number.isNaN(when)) return null;
  return BigInt(Math.max(0, Math.ceil((when - Date.now()) / 1000)));
}

/**
 * The largest Retry-After (seconds) among `failures`, or `otherwise` when none gave one; at
 * least a second, as the gateway says it (a 0 from a box in front of a gateway had clients
 * retry at once). Compared as whole numbers of any size and written back in digits, as the
 * gateway does: a Number wrote a gateway's `99999999999999999999999` as `1e+23`, which is no
 * Retry-After.
 * @param {Failure[]} failures @param {number} otherwise
 * @returns {string}
 */
function longestWait(failures, otherwise) {
  const waits = /** @type {bigint[]} */ (
    failures.map((f) => waitOf(f.retryAfter ?? "")).filter((w) => w !== null)
  );
  const longest = waits.reduce((a, b) => (b > a ? b : a), waits[0] ?? BigInt(otherwise));
  return String(longest < 1n ? 1n : longest);
}

/**
 * The client's answer when every region tried failed (or none was tried), or the last one
 * timed out. Codes as the gateway's for its upstreams (gateway/http/final_error.py): a panic
 * (every region left was marked down, and was tried anyway) is "nothing healthy", a 503, as
 * is every region refusing for now (503, or 429 for some), with the longest wait a region
 * asked for; every region at capacity (429) is a 429; anything else a 502.
 * @param {Failure[]} failures @param {number} untried  candidates left out by MAX_ATTEMPTS
 * @param {boolean} [panic]  the router's reason was panic: no healthy candidate was left
 */
export function finalError(failures, untried, panic = false) {
  const tried = failures.map((f) => `${f.region} (${f.what})`).join(", ");
  const last = failures.at(-1);
  if (last?.timedOut) {
    // x-should-retry: false, as the gateway's 504 says it: the OpenAI SDKs retry a 5xx twice
    // on their own, and would run again what this Worker chose not to send elsewhere.
    return errorResponse(
      "upstream_timeout",
      `no response in time: ${tried}. The request was not sent to another region, since ` +
        `${last.region} may still be running it. Retry only if running it twice is safe`,
      { "x-should-retry": "false" },
    );
  }
  const tail = untried > 0 ? `; ${untried} more region(s) not tried (MAX_ATTEMPTS)` : "";
  if (panic) {
    // The gateway's answer to a panic that failed: the regions were known to be down (their
    // gateways' tables stopped answering) and tried in case that lagged. A 502 "retry the
    // request" sent the SDKs straight back, with no wait asked for.
    const after = longestWait(failures, NO_CANDIDATE_RETRY_AFTER_S);
    return errorResponse(
      "no_healthy_upstream",
      `no healthy region can serve the request; tried the ones marked down anyway: ` +
        `${tried}${tail}. Retry in ${after} s`,
      { "retry-after": after },
    );
  }
  const busy = failures.length > 0 && failures.every((f) => f.status === 429 || f.status === 503);
  if (busy && failures.every((f) => f.status === 429)) {
    const after = longestWait(failures, 1);
    return errorResponse(
      "upstreams_at_capacity",
      `every region tried is at capacity: ${tried}${tail}. Retry after ${after} s`,
      { "retry-after": after },
    );
  }
  if (busy) {
    const after = longestWait(failures, NO_CANDIDATE_RETRY_AFTER_S);
    return errorResponse(
      "no_healthy_upstream",
      `no region tried can serve the request now: ${tried}${tail}. Retry in ${after} s`,
      { "retry-after": after },
    );
  }
  return errorResponse(
    "upstream_failed",
    `every region tried failed: ${tried}${tail}. Retry the request`,
  );
}
