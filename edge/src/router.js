// @ts-check
/**
 * The router of gateway/routing/router.py in JavaScript, with origin = "client": the network
 * cost of a candidate is the distance-model RTT from the client to its region. Pure: no I/O,
 * no clock, no randomness but the `rng` it is handed.
 *
 * Steps, as in Python: filter (model, residency, drain, health with a panic threshold,
 * weight-0 standby), score by expected time to first byte
 * (`net + ttft * (1 + queue / slots) + bias`, an unknown TTFT taking the model's median),
 * choose by weighted power-of-two-choices among scores within the tolerance band of the best,
 * and order the rest as the failover list. edge/test/route-cases.json, generated from the
 * Python router by scripts/gen_edge_cases.py, holds the two to the same answers.
 */

import { estRttMs } from "./distance.js";

// gateway.defaults.QUEUED_REQUEST_MS: the wait a request queued ahead adds, per slot, when no
// upstream of the model has a fresh TTFT (route-cases.json holds the two routers together).
export const QUEUED_REQUEST_MS = 200;

/**
 * @typedef {object} Upstream  one backend as the routing table shows it
 * @property {string} id
 * @property {string} region
 * @property {Set<string>} models
 * @property {number} weight       0: standby
 * @property {number} bias_ms
 * @property {boolean} drained
 * @property {boolean} healthy
 * @property {number | null} ttft_ms
 * @property {number | null} queue_depth
 * @property {number} slots
 *
 * @typedef {object} Region
 * @property {string} id
 * @property {number} latitude
 * @property {number} longitude
 * @property {string} url          the region gateway's public URL ("" when unknown)
 *
 * @typedef {object} Residency
 * @property {string} name
 * @property {Set<string>} countries
 * @property {Set<string>} continents
 * @property {Set<string>} regions
 *
 * @typedef {object} Policy
 * @property {number} tolerance_ms
 * @property {number} tolerance_ratio
 * @property {number} panic_threshold
 * @property {Residency[]} residency
 *
 * @typedef {object} Table
 * @property {Map<string, Region>} regions
 * @property {Upstream[]} upstreams
 * @property {Policy} policy
 *
 * @typedef {object} Client  where the client is (request.cf)
 * @property {number} latitude
 * @property {number} longitude
 * @property {string | null} country
 * @property {string | null} continent
 *
 * @typedef {"measured" | "prior" | "unknown"} LoadSource
 *
 * @typedef {object} Candidate
 * @property {Upstream} upstream
 * @property {number} score_ms
 * @property {number} net_ms
 * @property {number} load_ms
 * @property {LoadSource} load_source
 * @property {boolean} healthy
 * @property {boolean} standby
 *
 * @typedef {object} Exclusion
 * @property {string} upstream
 * @property {string} region
 * @property {string} reason
 *
 * @typedef {object} Decision
 * @property {string} outcome
 * @property {Candidate[]} order     order[0] is the choice; the rest is the failover list
 * @property {Exclusion[]} excluded
 * @property {string} reason
 * @property {string | null} residency
 * @property {string[]} band         upstream ids within the tolerance band
 */

export const Outcome = Object.freeze({
  ROUTED: "routed",
  MODEL_NOT_FOUND: "model_not_found",
  NO_CANDIDATE: "no_candidate",
});

export const Reason = Object.freeze({
  LOWEST_SCORE: "lowest-score",
  P2C_IN_BAND: "p2c-in-band",
  STANDBY: "standby",
  PANIC: "panic",
  FAILOVER: "failover",
  NO_UPSTREAM_SERVES: "no upstream serves the model",
  NOTHING_USABLE: "nothing usable",
});

/**
 * The TTFT to assume for an upstream with no fresh value: the median of the fresh values of
 * the upstreams serving the model (null when none has one). Never 0: an idle far backend
 * scored at 0 ms would look faster than a near one that is working.
 * @param {Upstream[]} serving
 */
function ttftPrior(serving) {
  const known = serving
    .map((u) => u.ttft_ms)
    .filter((t) => t !== null)
    .sort((a, b) => a - b);
  if (known.length === 0) return null;
  const mid = Math.floor(known.length / 2);
  // statistics.median: the mean of the two middle values for an even count
  return known.length % 2 ? known[mid] : (known[mid - 1] + known[mid]) / 2;
}

/**
 * @param {Upstream} u @param {number} net @param {number | null} prior
 * @returns {Candidate}
 */
function candidate(u, net, prior) {
  let ttft = u.ttft_ms;
  /** @type {LoadSource} */
  let loadSource = "measured";
  if (ttft === null && prior !== null) {
    ttft = prior;
    loadSource = "prior";
  }
  // No fresh TTFT anywhere: the first token's own time is equally unknown for all (0), but a
  // queue still costs its requests ahead: a backend 500 deep must not rank with an idle one.
  const load =
    ttft === null
      ? (QUEUED_REQUEST_MS * (u.queue_depth ?? 0)) / u.slots
      : ttft * (1 + (u.queue_depth ?? 0) / u.slots);
  if (ttft === null) loadSource = "unknown";
  return {
    upstream: u,
    score_ms: net + load + u.bias_ms,
    net_ms: net,
    load_ms: load,
    load_source: loadSource,
    healthy: u.healthy,
    standby: u.weight <= 0,
  };
}

/** @param {Candidate[]} cands */
function byScore(cands) {
  return [...cands].sort(
    (a, b) =>
      a.score_ms - b.score_ms ||
      (a.upstream.id < b.upstream.id ? -1 : a.upstream.id > b.upstream.id ? 1 : 0),
  );
}

/** @param {Candidate[]} cands @param {() => number} rng */
function weightedPick(cands, rng) {
  const total = cands.reduce((s, c) => s + c.upstream.weight, 0);
  let x = rng() * total;
  for (let i = 0; i < cands.length; i++) {
    x -= cands[i].upstream.weight;
    if (x < 0) return i;
  }
  return cands.length - 1; // float rounding at the very top of the range
}

/**
 * Weighted power of two choices: two draws in proportion to weight, fewer in-flight per unit
 * of weight wins, a tie goes to the first draw. With no in-flight counts (the Worker has none
 * of the fleet's) the first draw decides: a weighted random choice.
 * @param {Candidate[]} band @param {Map<string, number>} inFlight @param {() => number} rng
 */
function p2c(band, inFlight, rng) {
  const i = weightedPick(band, rng);
  const rest = [...band.slice(0, i), ...band.slice(i + 1)];
  const a = band[i];
  const b = rest[weightedPick(rest, rng)];
  const loadA = (inFlight.get(a.upstream.id) ?? 0) / a.upstream.weight;
  const loadB = (inFlight.get(b.upstream.id) ?? 0) / b.upstream.weight;
  return loadB < loadA ? b : a;
}

/**
 * @param {Residency} rule @param {Client} client
 */
function matches(rule, client) {
  return (
    (client.country !== null && rule.countries.has(client.country.toUpperCase())) ||
    (client.continent !== null && rule.continents.has(client.continent.toUpperCase()))
  );
}

/**
 * Route a request for `model` (null: any model, for requests that name none) from `client`.
 * @param {string | null} model
 * @param {Client} client
 * @param {Table} table
 * @param {() => number} [rng]
 * @param {Map<string, number>} [inFlight]
 * @returns {Decision}
 */
export function route(model, client, table, rng = Math.random, inFlight = new Map()) {
  const serving = table.upstreams.filter((u) => model === null || u.models.has(model));
  if (serving.length === 0) {
    return decision(Outcome.MODEL_NOT_FOUND, [], [], Reason.NO_UPSTREAM_SERVES);
  }
  const rule = table.policy.residency.find((r) => matches(r, client)) ?? null;
  /** @type {Upstream[]} */
  const allowed = [];
  /** @type {Exclusion[]} */
  const excluded = [];
  for (const u of serving) {
    if (rule !== null && !rule.regions.has(u.region)) {
      excluded.push({ upstream: u.id, region: u.region, reason: `residency rule ${rule.name}` });
    } else if (u.drained) {
      excluded.push({ upstream: u.id, region: u.region, reason: "drained" });
    } else {
      allowed.push(u);
    }
  }
  const ruleName = rule ? rule.name : null;
  const healthy = allowed.filter((u) => u.healthy);
  const panic =
    allowed.length > 0 && healthy.length / allowed.length < table.policy.panic_threshold;
  if (!panic) {
    for (const u of allowed) {
      if (!u.healthy) excluded.push({ upstream: u.id, region: u.region, reason: "unhealthy" });
    }
  }
  if (healthy.length === 0 && !panic) {
    return decision(Outcome.NO_CANDIDATE, [], excluded, Reason.NOTHING_USABLE, ruleName);
  }

  // Tiers, each tried only when the ones before are exhausted.
  const prior = serving.some((u) => u.ttft_ms === null) ? ttftPrior(serving) : null;
  /** @type {Map<string, number>} */
  const netByRegion = new Map();
  /** @type {Candidate[][]} */
  const tiers = [[], [], [], []];
  for (const u of allowed) {
    if (!(u.healthy || panic)) continue;
    let net = netByRegion.get(u.region);
    if (net === undefined) {
      const r = /** @type {Region} */ (table.regions.get(u.region));
      net = estRttMs(client.latitude, client.longitude, r.latitude, r.longitude);
      netByRegion.set(u.region, net);
    }
    const c = candidate(u, net, prior);
    tiers[(c.healthy ? 0 : 2) + (c.standby ? 1 : 0)].push(c);
  }
  const orderedTiers = tiers.filter((t) => t.length > 0).map(byScore);
  const first = orderedTiers[0];
  const best = first[0].score_ms;
  /** @type {string} */
  let reason = Reason.LOWEST_SCORE;
  let band = [first[0]];
  if (!first[0].standby && first[0].healthy) {
    const limit = best + Math.max(table.policy.tolerance_ms, table.policy.tolerance_ratio * best);
    band = first.filter((c) => c.score_ms <= limit);
  }
  let chosen = band[0];
  if (band.length > 1) {
    chosen = p2c(band, inFlight, rng);
    reason = Reason.P2C_IN_BAND;
  }
  if (first[0].standby) reason = Reason.STANDBY;
  if (!first[0].healthy) reason = Reason.PANIC;
  const order = [chosen, ...first.filter((c) => c !== chosen)];
  for (const t of orderedTiers.slice(1)) order.push(...t);
  return decision(
    Outcome.ROUTED,
    order,
    excluded,
    reason,
    ruleName,
    band.map((c) => c.upstream.id),
  );
}

/**
 * @param {string} outcome @param {Candidate[]} order @param {Exclusion[]} excluded
 * @param {string} reason @param {string | null} [residency] @param {string[]} [band]
 * @returns {Decision}
 */
function decision(outcome, order, excluded, reason, residency = null, band = []) {
  return { outcome, order, excluded, reason, residency, band };
}

/**
 * The regions to try, in order: each candidate's region the first time it comes up, leaving
 * out regions with no gateway URL (the Worker has nowhere to send their clients).
 * @param {Decision} d @param {Table} table
 * @returns {Region[]}
 */
export function regionOrder(d, table) {
  /** @type {Region[]} */
  const out = [];
  const seen = new Set();
  for (const c of d.order) {
    const id = c.upstream.region;
    if (seen.has(id)) continue;
    seen.add(id);
    const r = table.regions.get(id);
    if (r && r.url) out.push(r);
  }
  return out;
}
