// The Worker in workerd against real regional gateways (`geogate gateway`) and simulated
// backends (`geogate sim-backend`) on loopback: tests/edge/test_worker.py starts one gateway
// and one backend per region, writes where they are to the file named by GEOGATE_EDGE_E2E,
// and runs these tests. Clients are placed with request.cf overrides.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import {
  CITIES,
  blackhole,
  closedUrl,
  fakeGateway,
  routeFields,
  startBehindClient,
  startWorker,
} from "./support/harness.js";

const SPEC = process.env.GEOGATE_EDGE_E2E
  ? JSON.parse(readFileSync(process.env.GEOGATE_EDGE_E2E, "utf8"))
  : null;
const SKIP = SPEC ? false : "needs the gateways that tests/edge/test_worker.py starts";

const EXPECTED = {
  London: "eu-central",
  Singapore: "ap-southeast",
  "New York": "us-east",
  Sydney: "ap-southeast",
  "São Paulo": "sa-east",
};
// Documentation addresses (RFC 5737), one per city: what the backends must see as the client.
const IPS = {
  London: "192.0.2.10",
  Singapore: "192.0.2.20",
  "New York": "198.51.100.30",
  Sydney: "198.51.100.40",
  "São Paulo": "203.0.113.50",
};

function workerVars(extra = {}) {
  return {
    ROUTING_TABLE_URLS: Object.values(SPEC.regions).map((r) => `${r.ops_url}/routing-table`),
    OPS_TOKEN: SPEC.ops_token,
    EDGE_SECRET: SPEC.secret,
    EDGE_KEY_ID: SPEC.key_id,
    TABLE_TTL_S: 0.25,
    ...extra,
  };
}

function header(headers, name) {
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name);
  return key === undefined ? undefined : headers[key];
}

/** POST /v1/echo as a client in `city`: the backend answers with the headers it got. */
async function echo(mf, city, rid = undefined) {
  const resp = await mf.dispatchFetch("https://api.example.com/v1/echo", {
    method: "POST",
    body: JSON.stringify({ model: SPEC.model }),
    headers: {
      "content-type": "application/json",
      "cf-connecting-ip": IPS[city],
      ...(rid ? { "x-request-id": rid } : {}),
      // A client's own claim about itself: the Worker must drop it and send its own.
      "geogate-client": "v1;kid=k1;ts=0;aud=x;ip=6.6.6.6;lat=0;lon=0;sig=forged",
    },
    cf: CITIES[city],
  });
  const body = await resp.json();
  return { resp, body, route: routeFields(resp.headers.get("geogate-route")) };
}

async function metrics(region) {
  const resp = await fetch(`${SPEC.regions[region].ops_url}/metrics`, {
    headers: { authorization: `Bearer ${SPEC.ops_token}` },
  });
  assert.equal(resp.status, 200);
  return resp.text();
}

describe("the Worker in front of real regional gateways", { skip: SKIP }, () => {
  let mf;
  before(async () => {
    mf = await startWorker(workerVars());
  });
  after(async () => {
    await mf?.dispose();
  });

  for (const [i, [city, region]] of Object.entries(EXPECTED).entries()) {
    test(`a client in ${city} reaches ${region}, which sees it as the edge signed it`, async () => {
      const rid = `e2e-client-${i}`;
      const { resp, body, route } = await echo(mf, city, rid);
      assert.equal(resp.status, 200, JSON.stringify(body));
      assert.equal(route.tier, "edge");
      assert.equal(route.region, region, resp.headers.get("geogate-route"));
      assert.equal(route.reason, "lowest-score");
      assert.equal(route.colo, CITIES[city].colo);
      assert.equal(body.region, region, "the backend that answered is in another region");
      assert.equal(routeFields(resp.headers.get("geogate-region-route")).region, region);
      // The regional gateway believed the signed header: the client is the edge's client.
      assert.equal(header(body.headers, "x-real-ip"), IPS[city]);
      assert.equal(header(body.headers, "geogate-client"), undefined);
      assert.equal(resp.headers.get("x-request-id"), rid);
      assert.equal(header(body.headers, "x-request-id"), rid);
    });
  }

  test("the regional gateways located those clients from the edge (source=edge)", async () => {
    const want = { "eu-central": ["GB"], "ap-southeast": ["SG", "AU"], "us-east": ["US"] };
    want["sa-east"] = ["BR"];
    for (const [region, countries] of Object.entries(want)) {
      const text = await metrics(region);
      for (const c of countries) {
        const line = `geogate_client_requests_total\\{country="${c}",source="edge"\\} [1-9]`;
        assert.match(text, new RegExp(line));
      }
      assert.match(text, /geogate_edge_location_total\{result="ok"\} [1-9]/);
      assert.doesNotMatch(text, /geogate_client_requests_total\{[^}]*source="(geoip|default)"/);
    }
  });

  test("a client known by its country only reaches its region, which sees its IP", async () => {
    // No coordinates: Brazil's point (geodb/data/countries.csv), not the default location.
    const ip = "203.0.113.60";
    const cf = { latitude: null, longitude: null, country: "BR", continent: "SA", city: null };
    const resp = await mf.dispatchFetch("https://api.example.com/v1/echo", {
      method: "POST",
      body: JSON.stringify({ model: SPEC.model }),
      headers: { "content-type": "application/json", "cf-connecting-ip": ip },
      cf: { ...cf, colo: "GRU" },
    });
    const body = await resp.json();
    assert.equal(resp.status, 200, JSON.stringify(body));
    assert.equal(routeFields(resp.headers.get("geogate-route")).region, "sa-east");
    assert.equal(body.region, "sa-east");
    // The gateway believed the signed header: the backend sees the client, not the Worker.
    assert.equal(header(body.headers, "x-real-ip"), ip);
  });

  test("an SSE stream arrives event by event", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({
        model: SPEC.model,
        stream: true,
        max_tokens: 10,
        messages: [{ role: "user", content: "hi" }],
      }),
      headers: { "content-type": "application/json", "cf-connecting-ip": IPS["São Paulo"] },
      cf: CITIES["São Paulo"],
    });
    assert.equal(resp.status, 200);
    assert.match(resp.headers.get("content-type"), /^text\/event-stream/);
    assert.equal(routeFields(resp.headers.get("geogate-route")).region, "sa-east");
    // Each event carries the time the backend wrote it (sim-backend --stamp).
    const events = [];
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const chunk of resp.body) {
      const arrived = Date.now() / 1000;
      buffer += decoder.decode(chunk, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const stamp = /^: t=([0-9.]+)$/m.exec(event);
        events.push({ arrived, sent: stamp ? Number(stamp[1]) : null, data: event });
      }
    }
    const stamped = events.filter((e) => e.sent !== null);
    assert.ok(stamped.length >= 11, `${stamped.length} events`); // role, 10 tokens, finish
    assert.match(events.at(-1).data, /^data: \[DONE\]$/);
    const lastSent = stamped.at(-1).sent;
    // Not buffered: the first token reached the client before the backend wrote the last.
    assert.ok(stamped[1].arrived < lastSent, "the stream arrived all at once");
    for (const e of stamped) {
      assert.ok(e.arrived - e.sent < 1.0, `an event waited ${e.arrived - e.sent} s`);
    }
  });

  test("a client that leaves mid-stream stops the backend's generation", async () => {
    // The Worker relays the body through a stream of its own (src/stream.js): its cancel
    // must reach the gateway's connection, or the backend generates for nobody.
    const stats = async () => (await fetch(`${SPEC.regions["sa-east"].sim_url}/stats`)).json();
    const before = await stats();
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({
        model: SPEC.model,
        stream: true,
        max_tokens: 400, // 20 s at the backends' 20 tokens/s
        messages: [{ role: "user", content: "hi" }],
      }),
      headers: { "content-type": "application/json", "cf-connecting-ip": IPS["São Paulo"] },
      cf: CITIES["São Paulo"],
    });
    assert.equal(resp.status, 200);
    const reader = resp.body.getReader();
    for (let i = 0; i < 3; i++) await reader.read();
    assert.equal((await stats()).active, before.active + 1);
    await reader.cancel();
    let now = await stats();
    for (let i = 0; i < 50 && (now.active > before.active || now.cancelled === before.cancelled); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      now = await stats();
    }
    assert.equal(now.active, before.active, JSON.stringify(now));
    assert.equal(now.cancelled, before.cancelled + 1, JSON.stringify(now));
  });

  test("a client that leaves before the first byte stops the backend's generation", async () => {
    // Behind a client Worker that can leave (harness.js), with one more table source that
    // fails at once and then hangs: the request the client leaves has a table read in the
    // background, which kept it, and the region's request with it, running without the
    // Worker's own cancel (src/proxy.js).
    let reads = 0;
    const slowTable = await fakeGateway(() => (reads++ === 0 ? { status: 503 } : null));
    const stats = async () => (await fetch(`${SPEC.regions["sa-east"].sim_url}/stats`)).json();
    const before = await stats();
    let generating = false; // the cue saw the backend at work: else the checks below prove nothing
    const running = async () => {
      for (let i = 0; i < 100 && !generating; i++) {
        generating = (await stats()).active > before.active;
        if (!generating) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return { body: "now" };
    };
    const cue = await fakeGateway(running); // answers once the backend is generating
    const vars = workerVars({ TABLE_TTL_S: 0, TABLE_TIMEOUT_S: 15 });
    vars.ROUTING_TABLE_URLS = [...vars.ROUTING_TABLE_URLS, `${slowTable.url}/routing-table`];
    const client = await startBehindClient(vars);
    try {
      const headers = { "content-type": "application/json", "cf-connecting-ip": IPS["São Paulo"] };
      const call = async (doc) => {
        const body = JSON.stringify({ headers, cf: CITIES["São Paulo"], ...doc });
        return (await client.dispatchFetch("http://client/", { method: "POST", body })).json();
      };
      assert.equal((await call({ url: "https://api.example.com/v1/models" })).status, 200);
      const gone = await call({
        url: "https://api.example.com/v1/chat/completions",
        method: "POST",
        // Not a stream: the backend answers only once all 400 tokens are generated (20 s).
        body: JSON.stringify({ model: SPEC.model, max_tokens: 400, messages: [] }),
        leaveWhen: cue.url,
      });
      assert.equal(gone.left, true, JSON.stringify(gone));
      assert.ok(generating, "the backend never started the request");
      for (let i = 0; i < 50 && reads < 2; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(reads, 2, "no table read in the background");
      let now = await stats();
      // Well under the background read's 15 s, which would end the request without the cancel.
      // (A whole answer's cancel is not counted in `cancelled`, a stream's is: the request's
      // end without completing is what says it.)
      for (let i = 0; i < 100 && now.active > before.active; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        now = await stats();
      }
      assert.equal(now.active, before.active, JSON.stringify(now)); // within 5 s
      assert.equal(now.completed, before.completed, JSON.stringify(now));
    } finally {
      await client.dispose();
      await Promise.all([slowTable.close(), cue.close()]);
    }
  });

  /** A Worker on a cold start whose table sources are all down: it routes on the fallback. */
  async function coldWorker(euUrl) {
    const regionOf = (id, url) => ({
      id,
      latitude: SPEC.regions[id].latitude,
      longitude: SPEC.regions[id].longitude,
      url,
      upstreams: [{ id: `${id}-1`, models: [SPEC.model] }],
    });
    return startWorker(
      workerVars({
        ROUTING_TABLE_URLS: [`${await closedUrl()}/routing-table`],
        FALLBACK_TABLE: {
          regions: [
            regionOf("eu-central", euUrl),
            regionOf("us-east", SPEC.regions["us-east"].url),
          ],
        },
        RESPONSE_TIMEOUT_S: 0.5,
      }),
    );
  }

  test("cold start, no table source: the fallback routes; a refused one fails over", async () => {
    const cold = await coldWorker(await closedUrl());
    try {
      const { resp, body, route } = await echo(cold, "London");
      assert.equal(resp.status, 200, JSON.stringify(body));
      assert.deepEqual(
        [route.region, route.reason, route.table, route.attempts],
        ["us-east", "failover", "fallback", "2"],
      );
      assert.equal(body.region, "us-east");
      assert.equal(header(body.headers, "x-real-ip"), IPS.London);
    } finally {
      await cold.dispose();
    }
  });

  // The hung region got the whole request: sending it on to us-east could run it twice.
  test("a hung region is a 504, not sent on: it may still be running the request", async () => {
    const hung = await blackhole();
    try {
      const cold = await coldWorker(hung.url);
      try {
        const { resp, body } = await echo(cold, "London");
        assert.equal(resp.status, 504, JSON.stringify(body));
        assert.equal(body.error.code, "upstream_timeout");
        assert.match(body.error.message, /eu-central \(no response in 0\.5 s\)/);
        assert.doesNotMatch(body.error.message, /us-east/);
      } finally {
        await cold.dispose();
      }
    } finally {
      await hung.close();
    }
  });

  test("a region's backends die: its clients move on, and no request fails", async () => {
    const results = [];
    const send = async () => {
      const { resp, body, route } = await echo(mf, "London");
      const { region, reason } = route;
      results.push({ status: resp.status, region, reason, served: body.region });
    };
    for (let i = 0; i < 3; i++) await send();
    assert.deepEqual(new Set(results.map((r) => r.served)), new Set(["eu-central"]));
    const before = results.length;
    process.kill(-SPEC.regions["eu-central"].sim_pid, "SIGKILL");
    // Until the table shows eu-central down, its requests fail over (before their first
    // byte) to the next region; then the Worker routes London to us-east directly.
    let settled = 0;
    const deadline = Date.now() + 20_000;
    while (settled < 5 && Date.now() < deadline) {
      await send();
      const last = results.at(-1);
      settled = last.region === "us-east" && last.reason === "lowest-score" ? settled + 1 : 0;
    }
    // What happened, request by request, for whoever reads the test's output.
    const seen = {};
    for (const r of results.slice(before)) {
      const key = `${r.status} ${r.region} ${r.reason}`;
      seen[key] = (seen[key] ?? 0) + 1;
    }
    console.log(JSON.stringify({ "London after eu-central's backend died": seen }));
    assert.deepEqual(results.filter((r) => r.status !== 200), [], "requests failed");
    assert.equal(settled, 5, JSON.stringify(results.slice(before)));
    assert.ok(results.slice(before).every((r) => r.served === "us-east"), JSON.stringify(results));
  });
});
