// The Worker in workerd, on its own: its answers that need no gateway, the static fallback
// table on a cold start with every gateway unreachable, and its errors when no region
// answers. The tests against real gateways are in e2e.test.js.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  CITIES,
  blackhole,
  closedUrl,
  regionEntry,
  startWorker,
  wranglerConfig,
} from "./support/harness.js";

const CHAT = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });

function fallback(urls) {
  const region = (id, latitude, longitude) => regionEntry(id, latitude, longitude, urls[id]);
  return {
    regions: [
      region("eu-central", 50.11, 8.68),
      region("us-east", 37.37, -79.82),
      region("ap-southeast", 1.35, 103.82),
    ],
  };
}

async function errorOf(resp) {
  assert.equal(resp.headers.get("content-type"), "application/json");
  const doc = await resp.json();
  assert.deepEqual(Object.keys(doc.error).sort(), ["code", "message", "param", "type"]);
  return doc.error;
}

const workers = [];
async function worker(vars) {
  const mf = await startWorker(vars);
  workers.push(mf);
  return mf;
}
after(async () => {
  await Promise.all(workers.map((w) => w.dispose()));
});

/** A Worker on a cold start with every gateway unreachable: the fallback table's regions. */
async function unreachable(vars = {}) {
  const urls = {
    "eu-central": await closedUrl(),
    "us-east": await closedUrl(),
    "ap-southeast": await closedUrl(),
  };
  const mf = await worker({
    ROUTING_TABLE_URLS: [`${await closedUrl()}/routing-table`],
    FALLBACK_TABLE: fallback(urls),
    TABLE_TIMEOUT_S: 1,
    ...vars,
  });
  return { mf, urls };
}

describe("every gateway unreachable, on a cold start", () => {
  let mf;
  let urls;
  before(async () => {
    ({ mf, urls } = await unreachable());
  });

  test("the fallback table still routes: nearest region first, then the next", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: CHAT,
      headers: { "content-type": "application/json" },
      cf: CITIES.London,
    });
    assert.equal(resp.status, 502);
    const err = await errorOf(resp);
    assert.equal(err.code, "upstream_failed");
    assert.equal(err.param, null); // as OpenAI's errors carry it
    const order = [...err.message.matchAll(/(eu-central|us-east|ap-southeast) \(connect error/g)];
    assert.deepEqual(
      order.map((m) => m[1]),
      ["eu-central", "us-east", "ap-southeast"],
      err.message,
    );
  });

  test("a client in Singapore starts in Singapore", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: CHAT,
      cf: CITIES.Singapore,
    });
    const err = await errorOf(resp);
    assert.match(err.message, /^every region tried failed: ap-southeast \(connect error/);
  });

  test("a model the table does not list is a 404", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({ model: "nope", messages: [] }),
      cf: CITIES.London,
    });
    assert.equal(resp.status, 404);
    const err = await errorOf(resp);
    assert.equal(err.code, "model_not_found");
    assert.equal(err.param, "model"); // the field at fault, as the gateway's error names it
  });
});

test("MAX_ATTEMPTS bounds the regions tried, and the error says so", async () => {
  const urls = {
    "eu-central": await closedUrl(),
    "us-east": await closedUrl(),
    "ap-southeast": await closedUrl(),
  };
  const mf = await worker({
    FALLBACK_TABLE: fallback(urls),
    ROUTING_TABLE_URLS: [],
    MAX_ATTEMPTS: 2,
  });
  const resp = await mf.dispatchFetch("https://api.example.com/v1/completions", {
    method: "POST",
    body: JSON.stringify({ model: "m", prompt: "hi" }),
    cf: CITIES["New York"],
  });
  const err = await errorOf(resp);
  assert.match(err.message, /us-east .*eu-central .*; 1 more region\(s\) not tried/);
});

test("a gateway that never answers is a timeout; with nothing else left, a 504", async () => {
  const hung = await blackhole();
  try {
    const mf = await worker({
      FALLBACK_TABLE: { regions: [fallback({ "eu-central": hung.url }).regions[0]] },
      ROUTING_TABLE_URLS: [],
      RESPONSE_TIMEOUT_S: 0.3,
    });
    const t0 = Date.now();
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: CHAT,
      cf: CITIES.London,
    });
    assert.equal(resp.status, 504);
    const err = await errorOf(resp);
    assert.equal(err.code, "upstream_timeout");
    assert.match(err.message, /eu-central \(no response in 0\.3 s\)/);
    assert.ok(Date.now() - t0 < 5000);
  } finally {
    await hung.close();
  }
});

test("no table anywhere and no fallback: a 503 that says why", async () => {
  const mf = await worker({
    ROUTING_TABLE_URLS: [`${await closedUrl()}/routing-table`],
    FALLBACK_TABLE: undefined,
  });
  const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
    method: "POST",
    body: CHAT,
    cf: CITIES.London,
  });
  assert.equal(resp.status, 503);
  assert.equal(resp.headers.get("retry-after"), "5");
  const err = await errorOf(resp);
  assert.equal(err.code, "no_healthy_upstream");
  assert.match(err.message, /no routing table: every source failed .*FALLBACK_TABLE is not set/);
});

describe("answered by the Worker itself", () => {
  let mf;
  before(async () => {
    // A table the Worker needs no region of (none of these reaches one); with no table at
    // all the Worker is misconfigured (config.test.js).
    const regions = [regionEntry("eu-central", 50.11, 8.68, "")];
    mf = await worker({ ROUTING_TABLE_URLS: [], FALLBACK_TABLE: { regions }, MAX_BODY_BYTES: 1000 });
  });

  test("/healthz", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/healthz");
    assert.equal(resp.status, 200);
    assert.equal(await resp.text(), "ok");
  });

  test("a path outside /v1 is an OpenAI-shaped 404", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/admin/config");
    assert.equal(resp.status, 404);
    const err = await errorOf(resp);
    assert.equal(err.code, "unknown_url");
    assert.match(err.message, /under \/v1\//);
  });

  test("a body over MAX_BODY_BYTES is a 413, declared or not", async () => {
    const big = JSON.stringify({ model: "m", prompt: "x".repeat(2000) });
    const resp = await mf.dispatchFetch("https://api.example.com/v1/completions", {
      method: "POST",
      body: big,
    });
    assert.equal(resp.status, 413);
    assert.equal((await errorOf(resp)).code, "request_too_large");
    // Sent as a stream, with no Content-Length to go by: counted while read.
    const chunks = new Blob([big]).stream();
    const streamed = await mf.dispatchFetch("https://api.example.com/v1/completions", {
      method: "POST",
      body: chunks,
      duplex: "half",
    });
    assert.equal(streamed.status, 413);
    assert.equal((await errorOf(streamed)).code, "request_too_large");
  });

  test("a valid X-Request-Id is kept, anything else replaced", async () => {
    let resp = await mf.dispatchFetch("https://api.example.com/nope", {
      headers: { "x-request-id": "client-id-1" },
    });
    assert.equal(resp.headers.get("x-request-id"), "client-id-1");
    await resp.arrayBuffer();
    resp = await mf.dispatchFetch("https://api.example.com/nope", {
      headers: { "x-request-id": "two words" },
    });
    assert.match(resp.headers.get("x-request-id"), /^[0-9a-f]{32}$/);
    await resp.arrayBuffer();
  });
});

test("a bad setting is a 500 that names it", async () => {
  const mf = await worker({ MAX_ATTEMPTS: "zero" });
  const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
    method: "POST",
    body: CHAT,
  });
  assert.equal(resp.status, 500);
  const err = await errorOf(resp);
  assert.equal(err.code, "edge_misconfigured");
  assert.match(err.message, /MAX_ATTEMPTS = "zero": want a whole number from 1 up/);
  // A load balancer's health check must see it too: a misconfigured Worker is not healthy.
  const health = await mf.dispatchFetch("https://api.example.com/healthz");
  assert.equal(health.status, 500);
  assert.match((await errorOf(health)).message, /MAX_ATTEMPTS = "zero"/);
});

test("a bad FALLBACK_TABLE is named, on /healthz as on a request", async () => {
  const table = fallback({
    "eu-central": "https://eu.example.com/v1",
    "us-east": "https://us.example.com",
    "ap-southeast": "https://ap.example.com",
  });
  const mf = await worker({ FALLBACK_TABLE: table });
  const resp = await mf.dispatchFetch("https://api.example.com/healthz");
  assert.equal(resp.status, 500);
  const err = await errorOf(resp);
  assert.equal(err.code, "edge_misconfigured");
  assert.match(
    err.message,
    /FALLBACK_TABLE: regions\[0\]\.url "https:\/\/eu.example.com\/v1" has a path/,
  );
});

test("wrangler.jsonc's own settings are healthy", async () => {
  // Its URLs are examples: nothing here reaches them, /healthz only reads the settings.
  const { vars } = wranglerConfig();
  const mf = await worker({
    ROUTING_TABLE_URLS: vars.ROUTING_TABLE_URLS,
    FALLBACK_TABLE: vars.FALLBACK_TABLE,
  });
  const resp = await mf.dispatchFetch("https://api.example.com/healthz");
  assert.equal(resp.status, 200);
  assert.equal(await resp.text(), "ok");
});

describe("CORS, where CORS_ORIGINS allows an origin", () => {
  const APP = "https://app.example";
  let mf;
  before(async () => {
    ({ mf } = await unreachable({ CORS_ORIGINS: `${APP}, https://other.example` }));
  });

  test("a preflight is answered here, never sent to a region", async () => {
    const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "OPTIONS",
      headers: {
        origin: APP,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    assert.equal(resp.status, 204);
    assert.equal(resp.headers.get("access-control-allow-origin"), APP);
    assert.equal(resp.headers.get("access-control-allow-methods"), "GET, POST, OPTIONS");
    assert.equal(resp.headers.get("access-control-allow-headers"), "authorization, content-type");
    assert.equal(resp.headers.get("access-control-max-age"), "600");
    assert.equal(resp.headers.get("access-control-allow-credentials"), null);
  });

  test("an allowed origin reads the answers, errors too; another does not", async () => {
    const list = await mf.dispatchFetch("https://api.example.com/v1/models", {
      headers: { origin: APP },
    });
    assert.equal(list.status, 200);
    assert.equal(list.headers.get("access-control-allow-origin"), APP);
    // The OpenAI SDKs read x-should-retry: unexposed, a browser's reads none and retries a 5xx.
    const exposed = (list.headers.get("access-control-expose-headers") ?? "").split(", ");
    const names = ["x-request-id", "retry-after", "x-should-retry", "geogate-route"];
    for (const name of [...names, "geogate-region-route"]) {
      assert.ok(exposed.includes(name), `${name} in ${exposed}`);
    }
    // Every region unreachable: the error a browser must be able to read.
    const failed = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: CHAT,
      headers: { origin: APP, "content-type": "application/json" },
    });
    assert.ok(failed.status >= 500, String(failed.status));
    assert.equal(failed.headers.get("access-control-allow-origin"), APP);
    await failed.text();
    const other = await mf.dispatchFetch("https://api.example.com/v1/models", {
      headers: { origin: "https://evil.example" },
    });
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    await other.text();
  });

  test("an origin no browser sends makes the Worker misconfigured, by name", async () => {
    const bad = await worker({ ROUTING_TABLE_URLS: [], CORS_ORIGINS: "https://app.example/x" });
    const resp = await bad.dispatchFetch("https://api.example.com/healthz");
    assert.equal(resp.status, 500);
    const err = await errorOf(resp);
    assert.equal(err.code, "edge_misconfigured");
    assert.match(err.message, /CORS_ORIGINS: "https:\/\/app.example\/x": an origin is/);
  });
});
