// A test-only Worker: runs the Worker's router and signer inside workerd on the cases that
// scripts/gen_edge_cases.py wrote from the Python code, and answers with what they decided.
import { regionOrder, route } from "../../src/router.js";
import { signClient } from "../../src/sign.js";
import { normalizeTable } from "../../src/table.js";

/** The decision as the case files write the Python one. */
function decide(c) {
  const table = normalizeTable(c.table);
  const client = { ...c.client };
  const d = route(c.model, client, table);
  return {
    outcome: d.outcome,
    reason: d.reason,
    residency: d.residency,
    band: [...d.band].sort(),
    order: d.order.map((x) => x.upstream.id),
    scores: Object.fromEntries(d.order.map((x) => [x.upstream.id, x.score_ms])),
    excluded: d.excluded,
    regions: regionOrder(d, table).map((r) => r.id),
  };
}

/** How often each upstream is chosen first over `n` routings of one case. */
function shares(c, n) {
  const table = normalizeTable(c.table);
  const counts = {};
  for (let i = 0; i < n; i++) {
    const first = route(c.model, c.client, table).order[0].upstream.id;
    counts[first] = (counts[first] ?? 0) + 1;
  }
  return counts;
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const doc = await request.json();
    if (url.pathname === "/route") return Response.json(doc.map(decide));
    if (url.pathname === "/shares") return Response.json(shares(doc.case, doc.n));
    if (url.pathname === "/sign") {
      return Response.json(await Promise.all(doc.map((c) => signClient(c.secret, c.fields))));
    }
    return new Response("not found", { status: 404 });
  },
};
