// The Worker's router and signer, in workerd, against the Python router and signer: the
// cases in route-cases.json and sign-cases.json are written by scripts/gen_edge_cases.py
// from the Python code (tests/edge/test_edge_cases.py keeps them current).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { EDGE, startHarness } from "./support/harness.js";

const SCORE_EPS = 1e-6; // ms: a last-bit difference between two libms, nothing more
const load = (name) => JSON.parse(readFileSync(join(EDGE, "test", name), "utf8"));

let mf;
before(async () => {
  mf = await startHarness("cases-worker.js");
});
after(async () => {
  await mf?.dispose();
});

async function post(path, doc) {
  const resp = await mf.dispatchFetch(`http://cases${path}`, {
    method: "POST",
    body: JSON.stringify(doc),
  });
  assert.equal(resp.status, 200);
  return resp.json();
}

/**
 * What differs between the Python decision and the Worker's, or "" when they agree. Inside
 * the tolerance band the pick is random, so the band is compared as a set: the first
 * band.length of the order must be the band, and the order after it must be the same.
 */
function difference(want, got) {
  for (const key of ["outcome", "reason", "residency"]) {
    if (want[key] !== got[key]) return `${key}: want ${want[key]}, got ${got[key]}`;
  }
  if (JSON.stringify(want.band) !== JSON.stringify(got.band)) {
    return `band: want ${want.band}, got ${got.band}`;
  }
  const k = want.band.length;
  const head = [...got.order.slice(0, k)].sort();
  if (JSON.stringify(head) !== JSON.stringify(want.band)) {
    return `order starts ${head}, not the band`;
  }
  if (JSON.stringify(got.order.slice(k)) !== JSON.stringify(want.order.slice(k))) {
    return `failover order: want ${want.order.slice(k)}, got ${got.order.slice(k)}`;
  }
  for (const [id, score] of Object.entries(want.scores)) {
    if (!(Math.abs(got.scores[id] - score) <= SCORE_EPS)) {
      return `score of ${id}: want ${score}, got ${got.scores[id]}`;
    }
  }
  if (JSON.stringify(got.excluded) !== JSON.stringify(want.excluded)) {
    return `excluded: want ${JSON.stringify(want.excluded)}, got ${JSON.stringify(got.excluded)}`;
  }
  return "";
}

test("the Worker's router decides every case as the Python router does", async () => {
  const cases = load("route-cases.json");
  const got = await post("/route", cases);
  const problems = cases
    .map((c, i) => [c.name, difference(c.expect, got[i])])
    .filter(([, diff]) => diff)
    .map(([name, diff]) => `${name}: ${diff}`);
  assert.deepEqual(problems, []);
  assert.ok(cases.length >= 100, `only ${cases.length} cases`);
});

test("regions are tried in the order of their best candidate, each once", async () => {
  const cases = load("route-cases.json");
  const got = await post("/route", cases);
  for (const [i, c] of cases.entries()) {
    const regionOf = new Map(c.table.regions.flatMap((r) => r.upstreams.map((u) => [u.id, r.id])));
    const want = [...new Set(got[i].order.map((id) => regionOf.get(id)))];
    assert.deepEqual(got[i].regions, want, c.name);
  }
});

test("inside the band the choice follows the weights", async () => {
  const paris = load("route-cases.json").find((c) => c.name === "two near regions share the band");
  const counts = await post("/shares", { case: paris, n: 4000 });
  const share = counts["dub-1"] / 4000; // weight 3 against fra-1's 1
  assert.ok(Math.abs(share - 0.75) < 0.04, `dub-1 chosen ${share} of the time, want ~0.75`);
});

test("the Worker signs the client header byte for byte as geodb.edge.sign does", async () => {
  const cases = load("sign-cases.json");
  const got = await post("/sign", cases);
  assert.deepEqual(got, cases.map((c) => c.header));
});
