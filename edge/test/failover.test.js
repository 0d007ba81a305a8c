// When the Worker moves a request to the next region, and when it must not: the Worker in
// workerd against regional gateways played on loopback (support/harness.js fakeGateway), so
// each can answer exactly what a failing gateway, or Cloudflare in front of one, answers.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, describe, test } from "node:test";
import {
  CITIES,
  closedUrl,
  fakeGateway,
  regionEntry,
  routeFields,
  startWorker,
} from "./support/harness.js";

const SECRET = "s".repeat(32);
const CHAT = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });
const STREAM = JSON.stringify({ model: "m", stream: true, messages: [] });

/** eu-central (nearest London), then us-east: a fallback table with the given gateway URLs. */
function table(eu, us) {
  return {
    regions: [regionEntry("eu-central", 50.11, 8.68, eu), regionEntry("us-east", 37.37, -79.82, us)],
  };
}

const ok = (region) => () => ({ status: 200, body: { region } });

const started = [];
async function worker(eu, us, vars = {}) {
  const mf = await startWorker({ FALLBACK_TABLE: table(eu, us), ROUTING_TABLE_URLS: [], ...vars });
  started.push(mf);
  return mf;
}
async function gateway(answer) {
  const g = await fakeGateway(answer);
  started.push(g);
  return g;
}
after(async () => {
  await Promise.all(started.map((x) => ("dispose" in x ? x.dispose() : x.close())));
});

/** A request from London (eu-central first, us-east next). */
function fromLondon(mf, body = CHAT, path = "/v1/chat/completions") {
  return mf.dispatchFetch(`https://api.example.com${path}`, {
    method: "POST",
    body,
    headers: { "content-type": "application/json", "cf-connecting-ip": "192.0.2.10" },
    cf: CITIES.London,
  });
}

describe("signed per attempt", () => {
  test("a failover after a slow first attempt is signed when it is sent, not before", async () => {
    const slow = await gateway(() => ({ status: 503, body: {}, delayMs: 1200 }));
    const next = await gateway(ok("us-east"));
    const mf = await worker(slow.url, next.url, { EDGE_SECRET: SECRET });
    const resp = await fromLondon(mf);
    assert.equal(resp.status, 200);
    await resp.arrayBuffer();
    assert.equal(routeFields(resp.headers.get("geogate-route")).region, "us-east");
    const headerOf = (g) => g.requests[0].headers["geogate-client"];
    const tsOf = (g) => Number(/;ts=(\d+);/.exec(headerOf(g))[1]);
    // The first attempt took 1.2 s: the second's ts is at least a second later, i.e. the time
    // it was sent (a gateway allows edge.max_skew_s, 30 s, and the first byte may take 65).
    assert.ok(tsOf(next) >= tsOf(slow) + 1, `${tsOf(slow)} then ${tsOf(next)}`);
    assert.ok(Math.abs(tsOf(next) - next.requests[0].at / 1000) < 2);
    // ...and still a header the gateway believes: signed over what is sent.
    const [value, sig] = headerOf(next).split(";sig=");
    const mac = createHmac("sha256", SECRET).update(value).digest("base64url");
    assert.equal(sig, mac);
  });
});

describe("what moves a request to the next region", () => {
  test("a connect error", async () => {
    const next = await gateway(ok("us-east"));
    const mf = await worker(await closedUrl(), next.url);
    const resp = await fromLondon(mf);
    assert.equal(resp.status, 200);
    assert.deepEqual((await resp.json()).region, "us-east");
    const route = routeFields(resp.headers.get("geogate-route"));
    assert.deepEqual([route.region, route.reason, route.attempts], ["us-east", "failover", "2"]);
  });

  test("Cloudflare's 52x for an origin it could not reach (520-523, 525, 526, 530)", async () => {
    let status = 0;
    const down = await gateway(() => ({
      status,
      headers: { "content-type": "text/html" },
      body: `<html><title>error code: ${status}</title></html>`,
    }));
    const next = await gateway(ok("us-east"));
    const mf = await worker(down.url, next.url);
    for (status of [520, 521, 522, 523, 525, 526, 530]) {
      const resp = await fromLondon(mf);
      assert.equal(resp.status, 200, `after a ${status}`);
      assert.equal((await resp.json()).region, "us-east");
      const route = routeFields(resp.headers.get("geogate-route"));
      assert.deepEqual([route.region, route.attempts], ["us-east", "2"], `after a ${status}`);
    }
    assert.equal(down.requests.length, 7);
  });
});

describe("what does not: the region may still be running the request", () => {
  test("no response headers within the first-byte timeout: a 504, no second region", async () => {
    const hung = await gateway(() => null);
    const next = await gateway(ok("us-east"));
    const mf = await worker(hung.url, next.url, { FIRST_BYTE_TIMEOUT_S: 0.3 });
    const resp = await fromLondon(mf, STREAM);
    assert.equal(resp.status, 504);
    const { error } = await resp.json();
    assert.equal(error.code, "upstream_timeout");
    assert.equal(error.type, "upstream_error");
    assert.match(error.message, /eu-central \(no response in 0\.3 s\)/);
    assert.match(error.message, /not sent to another region/);
    // Nor again by an OpenAI SDK on its own, which retries a 5xx unless told not to.
    assert.equal(resp.headers.get("x-should-retry"), "false");
    assert.equal(hung.requests.length, 1, "the hung region got the request");
    assert.equal(next.requests.length, 0, "and it was sent again elsewhere");
  });

  test("the same for a non-streaming request (RESPONSE_TIMEOUT_S)", async () => {
    const hung = await gateway(() => null);
    const next = await gateway(ok("us-east"));
    const mf = await worker(hung.url, next.url, { RESPONSE_TIMEOUT_S: 0.3 });
    const resp = await fromLondon(mf);
    assert.equal(resp.status, 504);
    assert.equal((await resp.json()).error.code, "upstream_timeout");
    assert.equal(next.requests.length, 0);
  });

  test("Cloudflare's 524 (connected, no response in time) is a timeout too: a 504", async () => {
    const slow = await gateway(() => ({ status: 524, body: "error code: 524" }));
    const next = await gateway(ok("us-east"));
    const mf = await worker(slow.url, next.url);
    const resp = await fromLondon(mf);
    assert.equal(resp.status, 504);
    const { error } = await resp.json();
    assert.equal(error.code, "upstream_timeout");
    assert.match(error.message, /eu-central \(HTTP 524/);
    assert.equal(resp.headers.get("x-should-retry"), "false");
    assert.equal(next.requests.length, 0);
  });
});

test("a regional gateway's geogate-preferred-region is not passed to the client", async () => {
  const region = await gateway(() => ({
    status: 200,
    body: { region: "eu-central" },
    headers: {
      "geogate-preferred-region": "ap-southeast",
      "geogate-route": "tier=region; upstream=eu-central-1",
    },
  }));
  const mf = await worker(region.url, await closedUrl());
  const resp = await fromLondon(mf);
  assert.equal(resp.status, 200);
  await resp.arrayBuffer();
  // The client entered at the edge, which chose the region: a hint to enter elsewhere is the
  // gateway's reply to a client that came straight to it (it sees the Worker's address).
  assert.equal(resp.headers.get("geogate-preferred-region"), null);
  assert.equal(resp.headers.get("geogate-region-route"), "tier=region; upstream=eu-central-1");
});

describe("every region refusing for now", () => {
  test("503s with Retry-After: a 503 asking for the longest wait, as the gateway's", async () => {
    const refuse = (after, message) => () => ({
      status: 503,
      headers: after ? { "retry-after": after } : {},
      body: { error: { message, code: "no_healthy_upstream" } },
    });
    const eu = await gateway(refuse("7", "no upstream can serve model 'm' now (unhealthy)"));
    const us = await gateway(refuse("12", "draining"));
    const resp = await fromLondon(await worker(eu.url, us.url));
    assert.equal(resp.status, 503);
    assert.equal(resp.headers.get("retry-after"), "12");
    const { error } = await resp.json();
    assert.deepEqual([error.code, error.type], ["no_healthy_upstream", "service_unavailable"]);
    assert.match(
      error.message,
      /eu-central \(HTTP 503: no upstream .*\), us-east \(HTTP 503: draining\)/,
    );
    assert.match(error.message, /Retry in 12 s$/);
  });

  test("a 503 and a 429: a 503 too; none with a Retry-After: the gateway's 5 s", async () => {
    const eu = await gateway(() => ({ status: 503, body: {} }));
    const us = await gateway(() => ({ status: 429, body: {} }));
    const resp = await fromLondon(await worker(eu.url, us.url));
    assert.equal(resp.status, 503);
    assert.equal(resp.headers.get("retry-after"), "5");
    await resp.arrayBuffer();
  });

  test("a wait of 0 is a second; an HTTP date is read as the seconds until it", async () => {
    // A 0 (from a box in front of a gateway) had clients retry at once; a date was not read.
    const zero = await gateway(() => ({ status: 503, headers: { "retry-after": "0" }, body: {} }));
    const resp = await fromLondon(await worker(zero.url, zero.url));
    assert.equal(resp.status, 503);
    assert.equal(resp.headers.get("retry-after"), "1");
    await resp.arrayBuffer();
    const date = new Date(Date.now() + 60_000).toUTCString(); // "Sun, 29 Nov 2026 04:01:00 GMT"
    const dated = await gateway(() => ({ status: 503, headers: { "retry-after": date }, body: {} }));
    const other = await gateway(() => ({ status: 503, headers: { "retry-after": "7" }, body: {} }));
    const after = await fromLondon(await worker(dated.url, other.url));
    const wait = Number(after.headers.get("retry-after"));
    assert.ok(wait > 50 && wait <= 61, `${wait}`); // the date's minute, not 7 or the 5 s default
    await after.arrayBuffer();
  });

  /** A gateway refusing with `status` and the Retry-After `after()` says at the time. */
  const refusing = (status, after) =>
    gateway(() => ({ status, headers: { "retry-after": after() }, body: {} }));

  test("an HTTP date in the past is a wait of a second, as 0 is, not the 5 s default", async () => {
    // RFC 9110 §10.2.3: the date is when to retry, so one gone by says "now", which the
    // gateway's wait_s reads as 0 and its final error sends as 1 s. It is still advice: the
    // 5 s that stands for no Retry-After at all is not used, nor a negative count of seconds.
    const OLD = "Sun, 06 Nov 1994 08:49:37 GMT";
    let value = "";
    const past = await refusing(503, () => value);
    const none = await gateway(() => ({ status: 503, body: {} }));
    const mf = await worker(past.url, none.url);
    for (value of [OLD, new Date(Date.now() - 86_400_000).toUTCString()]) {
      const resp = await fromLondon(mf);
      assert.equal(resp.status, 503, value);
      assert.equal(resp.headers.get("retry-after"), "1", value);
      assert.match((await resp.json()).error.message, /Retry in 1 s$/, value);
    }
    // Every region at capacity, with a past date: the 429's wait is a second too.
    const full = await refusing(429, () => OLD);
    const resp = await fromLondon(await worker(full.url, full.url));
    assert.equal(resp.status, 429);
    assert.equal(resp.headers.get("retry-after"), "1");
    assert.match((await resp.json()).error.message, /Retry after 1 s$/);
    // A past date does not cut a longer wait another region asked for.
    value = OLD;
    const seven = await refusing(503, () => "7");
    const both = await fromLondon(await worker(past.url, seven.url));
    assert.equal(both.headers.get("retry-after"), "7");
    await both.arrayBuffer();
  });

  test("a Retry-After neither digits nor an HTTP date is ignored, not read as 0", async () => {
    // Read as 0 (a second) these would ask for less than the 5 s a region that gave no advice
    // gets; read by Date.parse alone, "-5" and "1.5" are dates in 2001, long past.
    let value = "";
    const junk = await refusing(503, () => value);
    const mf = await worker(junk.url, junk.url);
    const values = [
      "soon",
      "-5",
      "1.5",
      "",
      "+5",
      "1e3",
      "0x10",
      "7, 12",
      "99999999999999999999999.5",
      "in 30 s",
      "12:00:00",
      "Mon, 99 Foo 2026 99:99:99 GMT",
      "Sun, 06 Nov 1994", // a date with no time of day
    ];
    for (value of values) {
      const what = JSON.stringify(value);
      const before = junk.requests.length;
      const resp = await fromLondon(mf);
      assert.equal(resp.status, 503, what);
      assert.equal(junk.requests.length, before + 2, `${what}: both regions were tried`);
      assert.equal(resp.headers.get("retry-after"), "5", what);
      assert.match((await resp.json()).error.message, /Retry in 5 s$/, what);
    }
    // Beside another region's digits, junk is no wait at all: the digits are the answer.
    const twelve = await refusing(503, () => "12");
    const mixed = await worker(junk.url, twelve.url);
    for (value of ["soon", "-5", "1.5", ""]) {
      const resp = await fromLondon(mixed);
      assert.equal(resp.headers.get("retry-after"), "12", JSON.stringify(value));
      await resp.arrayBuffer();
    }
    // Every region at capacity, with junk: the 429's own default, a second.
    const full = await refusing(429, () => "soon");
    const resp = await fromLondon(await worker(full.url, full.url));
    assert.equal(resp.status, 429);
    assert.equal(resp.headers.get("retry-after"), "1");
    await resp.arrayBuffer();
  });

  test("an HTTP date ahead is the seconds until it, in RFC 9110's three forms", async () => {
    // An hour from now, on a whole second (an HTTP date has no finer part). The Worker reads
    // its clock between t0 and t1, so the wait is ceil((when - now) / 1000) for a now in
    // [t0, t1]: one value, or two a second apart, and far from the other region's 7.
    const when = (Math.floor(Date.now() / 1000) + 3600) * 1000;
    const d = new Date(when);
    const [wd, dd, mon, year, time] = d.toUTCString().replace(",", "").split(" ");
    const weekday = ["Sun", "Mon", "Tues", "Wednes", "Thurs", "Fri", "Satur"][d.getUTCDay()];
    const forms = {
      "IMF-fixdate": d.toUTCString(), // Sun, 06 Nov 1994 08:49:37 GMT
      "RFC 850": `${weekday}day, ${dd}-${mon}-${year.slice(2)} ${time} GMT`,
      asctime: `${wd} ${mon} ${String(Number(dd)).padStart(2, " ")} ${time} ${year}`,
    };
    let value = "";
    const dated = await refusing(503, () => value);
    const other = await refusing(503, () => "7");
    const mf = await worker(dated.url, other.url);
    for (const [form, v] of Object.entries(forms)) {
      value = v;
      const t0 = Date.now();
      const resp = await fromLondon(mf);
      const t1 = Date.now();
      assert.equal(resp.status, 503, form);
      const wait = resp.headers.get("retry-after") ?? "";
      const lo = Math.ceil((when - t1) / 1000);
      const hi = Math.ceil((when - t0) / 1000);
      assert.ok(
        /^\d+$/.test(wait) && Number(wait) >= lo && Number(wait) <= hi,
        `${form} ${JSON.stringify(v)}: ${wait}, not in [${lo}, ${hi}]`,
      );
      assert.match((await resp.json()).error.message, new RegExp(`Retry in ${wait} s$`), form);
    }
    // Another region's digits, longer than the date's hour, win over it.
    value = forms["IMF-fixdate"];
    const longer = await refusing(503, () => "7200");
    const resp = await fromLondon(await worker(dated.url, longer.url));
    assert.equal(resp.headers.get("retry-after"), "7200");
    await resp.arrayBuffer();
  });

  test("a 503 and a connect error: a 502, the request failed", async () => {
    const eu = await gateway(() => ({ status: 503, headers: { "retry-after": "7" }, body: {} }));
    const resp = await fromLondon(await worker(eu.url, await closedUrl()));
    assert.equal(resp.status, 502);
    assert.equal((await resp.json()).error.code, "upstream_failed");
  });
});

test("a gateway's hop-by-hop response headers are not passed to the client", async () => {
  const region = await gateway(() => ({
    status: 200,
    body: { region: "eu-central" },
    headers: {
      connection: "x-internal, keep-alive",
      "keep-alive": "timeout=5",
      "x-internal": "for the Worker's connection only",
      "proxy-authenticate": "Basic",
      upgrade: "h2c",
      trailer: "x-t",
      "x-kept": "yes",
    },
  }));
  const mf = await worker(region.url, await closedUrl());
  const resp = await fromLondon(mf);
  assert.equal(resp.status, 200);
  await resp.arrayBuffer();
  for (const name of ["keep-alive", "x-internal", "proxy-authenticate", "upgrade", "trailer"]) {
    assert.equal(resp.headers.get(name), null, name);
  }
  assert.equal(resp.headers.get("x-kept"), "yes");
});

describe("a refusal's body is read for its message only", () => {
  test("a 503 whose body stalls still moves the request on, soon", { timeout: 15_000 }, async () => {
    // The headers came, then nothing: the first-byte timer ended with the headers, and the
    // Worker waited for the rest of the body for good, never trying us-east.
    const stalled = await gateway(() => ({ status: 503, parts: ['{"error": {"mess'], hold: true }));
    const next = await gateway(ok("us-east"));
    const mf = await worker(stalled.url, next.url, { RESPONSE_TIMEOUT_S: 30 });
    const t0 = Date.now();
    const resp = await fromLondon(mf);
    assert.equal(resp.status, 200);
    assert.equal((await resp.json()).region, "us-east");
    assert.ok(Date.now() - t0 < 5000, `${Date.now() - t0} ms`);
  });

  test("a Retry-After past a Number's digits is sent on in digits", async () => {
    const long = "99999999999999999999999";
    const eu = await gateway(() => ({ status: 503, headers: { "retry-after": long }, body: {} }));
    const us = await gateway(() => ({ status: 503, headers: { "retry-after": "7" }, body: {} }));
    const resp = await fromLondon(await worker(eu.url, us.url));
    assert.equal(resp.status, 503);
    // Not "1e+23": Retry-After is digits (RFC 9110 §10.2.3), and the gateway sends them so.
    assert.equal(resp.headers.get("retry-after"), long);
    assert.match((await resp.json()).error.message, new RegExp(`Retry in ${long} s$`));
  });
});

test("a panic that failed is the gateway's 503 no_healthy_upstream, with a wait", async () => {
  // Every region known down (healthy: false, as after its gateway's table stopped answering):
  // tried anyway, in case that lagged, and each failed.
  const down = (t) => ({
    regions: t.regions.map((r) => ({
      ...r,
      upstreams: r.upstreams.map((u) => ({ ...u, healthy: false })),
    })),
  });
  const eu = await gateway(() => ({ status: 502, body: { error: { message: "no backend" } } }));
  const mf = await startWorker({
    FALLBACK_TABLE: down(table(eu.url, await closedUrl())),
    ROUTING_TABLE_URLS: [],
  });
  started.push(mf);
  const resp = await fromLondon(mf);
  assert.equal(resp.status, 503);
  assert.equal(resp.headers.get("retry-after"), "5");
  const { error } = await resp.json();
  assert.deepEqual([error.code, error.type], ["no_healthy_upstream", "service_unavailable"]);
  assert.match(error.message, /tried the ones marked down anyway: eu-central \(HTTP 502/);
});

test("the client's claims about itself are replaced by the Worker's", async () => {
  const region = await gateway(ok("eu-central"));
  const mf = await worker(region.url, await closedUrl());
  const forged = {
    "x-forwarded-for": "6.6.6.6",
    "x-real-ip": "6.6.6.6",
    forwarded: "for=6.6.6.6;proto=http",
    "x-forwarded-host": "internal.example",
    "x-forwarded-proto": "http",
    "true-client-ip": "6.6.6.6",
    "x-client-ip": "6.6.6.6",
    "x-http-method-override": "DELETE",
    "x-original-url": "/admin",
    x_forwarded_for: "6.6.6.6",
  };
  const resp = await mf.dispatchFetch("https://api.example.com/v1/chat/completions", {
    method: "POST",
    body: CHAT,
    headers: { ...forged, "cf-connecting-ip": "192.0.2.10", authorization: "Bearer sk-1" },
    cf: CITIES.London,
  });
  assert.equal(resp.status, 200);
  await resp.arrayBuffer();
  const seen = region.requests[0].headers;
  // A gateway that trusts Cloudflare's addresses walks X-Forwarded-For from the right: the
  // client's own entry would have been its client whenever the signed header is not believed.
  assert.equal(seen["x-forwarded-for"], "192.0.2.10");
  assert.equal(seen["x-forwarded-proto"], "https");
  for (const name of Object.keys(forged).filter((n) => !/^x-forwarded-(for|proto)$/.test(n))) {
    assert.equal(seen[name], undefined, name);
  }
  assert.equal(seen.authorization, "Bearer sk-1", "the API key is the gateway's to check");
});
