// A client that goes away: the region's request must end with it, or the region's backend
// generates for nobody. Before the response head, the Worker cancels the region's fetch on
// request.signal (src/proxy.js, wrangler.jsonc's enable_request_signal); once the body
// streams, the client's cancel reaches the region's connection through the body.
//
// Each test leaves background work behind the client (a table read, waitUntil()): workerd
// tears down a request whose client left, its fetches with it, as soon as none is left; while
// some is, the request runs on (up to TABLE_TIMEOUT_S here, 30 s at most on Cloudflare), and
// only the Worker's own cancel ends the region's request in that time.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import {
  CITIES,
  fakeGateway,
  regionEntry,
  startBehindClient,
  startWorker,
} from "./support/harness.js";

const CLOSE_WITHIN_MS = 4000;
const TABLE_TIMEOUT_S = 10; // how long the background read hangs: past CLOSE_WITHIN_MS
const HEADERS = { "content-type": "application/json", "cf-connecting-ip": "192.0.2.10" };

const started = [];
after(async () => {
  await Promise.all(started.map((x) => ("dispose" in x ? x.dispose() : x.close())));
});

/** Until `cond()` holds, or `ms` passed; whether it held. */
async function until(cond, ms) {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return cond();
}


/**
 * A region gateway on loopback (fakeGateway's `answer` for its API) whose own routing table
 * (`doc()`) answers the Worker's first read and leaves every later one hanging, as an ops
 * listener that stopped answering: with TABLE_TTL_S 0, each request after the first starts
 * one in the background, so a client that leaves leaves waitUntil() work behind.
 */
async function regionGateway(doc, answer) {
  const g = { tableReads: 0, url: "", requests: [] };
  const fake = await fakeGateway((req) => {
    if (req.path !== "/routing-table") return answer(req);
    return g.tableReads++ === 0 ? { body: doc() } : null;
  });
  started.push(fake);
  return Object.assign(g, { url: fake.url, requests: fake.requests });
}

const TABLE_VARS = (g) => ({
  ROUTING_TABLE_URLS: [`${g.url}/routing-table`],
  TABLE_TTL_S: 0,
  TABLE_TIMEOUT_S,
});

describe("a client gone before the region's response head", () => {
  test("cancels the region's request, and no other region is asked", async () => {
    let held = () => {};
    const holding = new Promise((resolve) => (held = resolve));
    const us = await fakeGateway(() => ({ body: { region: "us-east" } }));
    started.push(us);
    const doc = () => ({
      self_region: "eu-central",
      regions: [
        regionEntry("eu-central", 50.11, 8.68, eu.url),
        regionEntry("us-east", 37.37, -79.82, us.url),
      ],
    });
    const eu = await regionGateway(doc, async (req) => {
      if (req.path === "/leave") {
        await holding;
        return { body: "now" };
      }
      held();
      return null; // a completion that has not produced its first byte
    });
    const mf = await startBehindClient(TABLE_VARS(eu));
    started.push(mf);
    const call = async (doc) => {
      const resp = await mf.dispatchFetch("http://client/", {
        method: "POST",
        body: JSON.stringify({ headers: HEADERS, cf: CITIES.London, ...doc }),
      });
      return resp.json();
    };
    const warm = await call({ url: "https://api.example.com/v1/models", method: "GET" });
    assert.equal(warm.status, 200, JSON.stringify(warm));

    const gone = await call({
      url: "https://api.example.com/v1/chat/completions",
      method: "POST",
      body: JSON.stringify({ model: "m", max_tokens: 400, messages: [] }),
      leaveWhen: `${eu.url}/leave`,
    });
    const leftAt = Date.now();
    assert.equal(gone.left, true, JSON.stringify(gone));
    assert.ok(await until(() => eu.tableReads === 2, 1000), "no table read in the background");
    const asked = eu.requests.find((r) => r.path === "/v1/chat/completions");
    assert.ok(asked, "eu-central never got the request");
    const closed = await until(() => asked.closedAt !== null, CLOSE_WITHIN_MS);
    assert.ok(closed, `eu-central's request still open ${Date.now() - leftAt} ms after`);
    // A cancelled attempt is no region's failure: nothing fails over for a client gone. The
    // failover would be sent at once; a bound, since its absence cannot be waited for.
    await until(() => us.requests.length > 0, 300);
    assert.deepEqual(us.requests.map((r) => r.path), []);
  });
});

describe("a client gone mid-body", () => {
  const endless = (contentType, part) => () => ({
    status: 200,
    headers: { "content-type": contentType },
    parts: Array.from({ length: 400 }, () => part), // 20 s at one part per 50 ms
  });

  for (const [what, contentType, part, stream] of [
    ["an event stream", "text/event-stream", 'data: {"i":0}\n\n', true],
    ["a JSON body", "application/json", '{"pad":"x"}\n', false],
  ]) {
    test(`${what}: the client's cancel closes the region's connection`, async () => {
      const eu = () => regionEntry("eu-central", 50.11, 8.68, g.url);
      const doc = () => ({ self_region: "eu-central", regions: [eu()] });
      const g = await regionGateway(doc, endless(contentType, part));
      const mf = await startWorker(TABLE_VARS(g));
      started.push(mf);
      const send = (path, init) =>
        mf.dispatchFetch(`https://api.example.com${path}`, { cf: CITIES.London, ...init });
      assert.equal((await send("/v1/models", { headers: HEADERS })).status, 200);
      const resp = await send("/v1/chat/completions", {
        method: "POST",
        body: JSON.stringify({ model: "m", stream, messages: [] }),
        // identity: workerd would gzip a JSON body for a client that accepts it, holding back
        // the small parts this test reads
        headers: { ...HEADERS, "accept-encoding": "identity" },
      });
      assert.equal(resp.status, 200);
      const reader = resp.body.getReader();
      assert.equal((await reader.read()).done, false);
      assert.ok(await until(() => g.tableReads === 2, 1000), "no table read in the background");
      const asked = g.requests.find((r) => r.path === "/v1/chat/completions");
      assert.equal(asked.closedAt, null, "the region's response ended before the client left");
      await reader.cancel();
      const leftAt = Date.now();
      const closed = await until(() => asked.closedAt !== null, CLOSE_WITHIN_MS);
      assert.ok(closed, `the region's connection still open ${Date.now() - leftAt} ms after`);
    });
  }
});
