// What the Worker reads of a request to route it: where the client is when Cloudflare has no
// coordinates for it, the model in a compressed body, the model a /v1/models/{id} names; and
// /v1/models, which it answers itself from every region's table. The Worker in workerd, in
// front of regional gateways played on loopback.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { deflateRawSync, deflateSync, gzipSync } from "node:zlib";
import { after, before, describe, test } from "node:test";
import { CITIES, fakeGateway, regionEntry, routeFields, startWorker } from "./support/harness.js";

const SECRET = "s".repeat(32);
const IP = "198.51.100.77";
const COORDS = {
  "eu-central": [50.11, 8.68],
  "us-east": [37.37, -79.82],
  "ap-southeast": [1.35, 103.82],
};

const started = [];
after(async () => {
  await Promise.all(started.map((x) => ("dispose" in x ? x.dispose() : x.close())));
});

/** One gateway per region, each answering 200 with its region; the Worker on them. */
let gw;
let mf;
before(async () => {
  gw = {};
  for (const id of Object.keys(COORDS)) {
    gw[id] = await fakeGateway(() => ({ status: 200, body: { region: id } }));
    started.push(gw[id]);
  }
  // eu-central serves m and big; us-east m and "org/model-x"; ap-southeast m and a drained n.
  const models = {
    "eu-central": ["m", "big"],
    "us-east": ["m", "org/model-x"],
    "ap-southeast": ["m"],
  };
  const regions = Object.entries(COORDS).map(([id, [latitude, longitude]]) => ({
    id,
    latitude,
    longitude,
    url: gw[id].url,
    upstreams: [
      { id: `${id}-1`, models: models[id] },
      ...(id === "ap-southeast" ? [{ id: `${id}-2`, models: ["n"], drained: true }] : []),
    ],
  }));
  mf = await startWorker({
    FALLBACK_TABLE: { regions },
    EDGE_SECRET: SECRET,
    MAX_BODY_BYTES: 4096,
  });
  started.push(mf);
});

/** Which region got the request; its signed client header's fields when it has one. */
async function send(init, path = "/v1/chat/completions") {
  const before = Object.fromEntries(Object.entries(gw).map(([id, g]) => [id, g.requests.length]));
  const resp = await mf.dispatchFetch(`https://api.example.com${path}`, {
    method: "POST",
    ...init,
    headers: { "cf-connecting-ip": IP, ...init.headers },
  });
  const body = await resp.text();
  const hit = Object.keys(gw).find((id) => gw[id].requests.length > before[id]);
  const req = hit ? gw[hit].requests.at(-1) : null;
  const header = req?.headers["geogate-client"] ?? null;
  let fields = null;
  if (header) {
    const [value, sig] = header.split(";sig=");
    assert.equal(sig, createHmac("sha256", SECRET).update(value).digest("base64url"));
    fields = Object.fromEntries(
      value
        .split(";")
        .slice(1)
        .map((p) => p.split("=")),
    );
  }
  return { resp, body, region: hit ?? null, req, fields };
}

describe("a client Cloudflare knows by country or continent only", () => {
  const CHAT = JSON.stringify({ model: "m", messages: [] });
  // Miniflare fills a request.cf field left out from its own (a place in Texas): each is set.
  const nowhere = { latitude: null, longitude: null, country: null, continent: null, city: null };
  const only = (fields) => ({ ...nowhere, ...fields });

  test("routes from its country's point, and the gateway is told the client's IP", async () => {
    for (const [cf, region, lat, lon] of [
      [{ country: "US", continent: "NA", colo: "EWR" }, "us-east", "39.83", "-98.58"],
      [
        { country: "JP", continent: "AS", latitude: "", longitude: "" },
        "ap-southeast",
        "35.68",
        "139.77",
      ],
      [{ country: "DE" }, "eu-central", "50.11", "8.68"],
    ]) {
      const { resp, region: hit, fields } = await send({ body: CHAT, cf: only(cf) });
      assert.equal(resp.status, 200);
      assert.equal(hit, region, JSON.stringify(cf));
      assert.equal(routeFields(resp.headers.get("geogate-route")).reason, "lowest-score");
      // Signed with the client's address and the point the router used, as the gateway's
      // GeoIP would place a country-only address (geodb/data/countries.csv).
      assert.deepEqual(
        [fields.ip, fields.lat, fields.lon, fields.country],
        [IP, lat, lon, cf.country],
      );
      // The country's continent when Cloudflare gives none (as the gateway's GeoIP).
      assert.equal(fields.continent, cf.continent ?? "EU");
    }
  });

  test("a country not in the table: its continent's point", async () => {
    const { region, fields } = await send({
      body: CHAT,
      cf: only({ country: "XX", continent: "OC" }),
    });
    assert.equal(region, "ap-southeast"); // Sydney's point is nearer Singapore than Virginia
    assert.deepEqual(
      [fields.ip, fields.lat, fields.lon, fields.continent],
      [IP, "-33.87", "151.21", "OC"],
    );
    // XX is no country: not signed as one, or the gateway's residency rules matched nothing.
    assert.equal(fields.country, undefined);
  });

  test("Tor (T1 for country and continent): signed with neither, the gateway's GeoIP fills them", async () => {
    const { fields } = await send({
      body: CHAT,
      cf: only({ country: "T1", continent: "T1", latitude: "48.86", longitude: "2.35" }),
    });
    assert.deepEqual(
      [fields.ip, fields.lat, fields.lon, fields.country, fields.continent],
      [IP, "48.86", "2.35", undefined, undefined],
    );
  });

  test("nothing known: the default location, no header (the gateway locates it)", async () => {
    const { region, fields } = await send({ body: CHAT, cf: only({ colo: null }) });
    assert.equal(region, "eu-central");
    assert.equal(fields, null);
  });
});

describe("a compressed body", () => {
  // "big" is served in eu-central only: a client in Singapore reaches it only by its model.
  const doc = { model: "big", messages: [{ role: "user", content: "hi" }] };
  const raw = Buffer.from(JSON.stringify(doc));
  for (const [coding, bytes, what = coding] of [
    ["gzip", gzipSync(raw)],
    ["deflate", deflateSync(raw)],
    ["deflate", deflateRawSync(raw), "raw deflate"], // as some clients send it
    ["identity", raw],
    // Two members, one after the other (RFC 1952 §2.2), read whole as the gateway reads them.
    [
      "gzip",
      Buffer.concat([gzipSync(raw.subarray(0, 9)), gzipSync(raw.subarray(9))]),
      "gzip, two members",
    ],
  ]) {
    test(`${what}: routed by its model, sent on as it came`, async () => {
      const init = { body: bytes, headers: { "content-encoding": coding }, cf: CITIES.Singapore };
      const { resp, region, req } = await send(init);
      assert.equal(resp.status, 200);
      assert.equal(region, "eu-central");
      assert.equal(req.headers["content-encoding"], coding);
      assert.equal(req.body, bytes.toString(), "the bytes the client sent");
    });
  }

  test("an upload's form (audio transcription): routed by its model field, sent as it came", async () => {
    const form = (fields) =>
      Buffer.concat([
        ...Object.entries(fields).map(([k, v]) =>
          Buffer.from(`--B\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`),
        ),
        Buffer.from('--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'),
        Buffer.from("Content-Type: audio/wav\r\n\r\nRIFF\r\n--\r\nmodel\r\n--B--\r\n"),
      ]);
    const headers = { "content-type": "multipart/form-data; boundary=B" };
    const path = "/v1/audio/transcriptions";
    const upload = form({ model: "big", language: "en" });
    const { resp, region, req } = await send({ body: upload, headers, cf: CITIES.Singapore }, path);
    assert.equal(resp.status, 200);
    assert.equal(region, "eu-central", "the only region that serves big");
    assert.equal(req.body, upload.toString(), "the bytes the client sent");
    // No model field, or a form that does not parse: routed on location, the gateway answers.
    for (const body of [form({ language: "en" }), Buffer.from("--B\r\nnot a form")]) {
      const { region: near } = await send({ body, headers, cf: CITIES.Singapore }, path);
      assert.equal(near, "ap-southeast");
    }
  });

  test("a stream asked for in a gzip body waits FIRST_BYTE_TIMEOUT_S, not more", async () => {
    // Read only if the Worker reads the body: with stream: true, the shorter wait applies.
    const hung = await fakeGateway(() => null);
    started.push(hung);
    const regions = [
      {
        id: "eu-central",
        latitude: 50.11,
        longitude: 8.68,
        url: hung.url,
        upstreams: [{ id: "e", models: ["m"] }],
      },
    ];
    const w = await startWorker({
      FALLBACK_TABLE: { regions },
      FIRST_BYTE_TIMEOUT_S: 0.2,
      RESPONSE_TIMEOUT_S: 30,
    });
    started.push(w);
    const resp = await w.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: gzipSync(JSON.stringify({ model: "m", stream: true, messages: [] })),
      headers: { "content-encoding": "gzip" },
      cf: CITIES.London,
    });
    assert.equal(resp.status, 504);
    assert.match((await resp.json()).error.message, /no response in 0\.2 s/);
  });

  test("decoding past MAX_BODY_BYTES is a 413, as the gateway's", async () => {
    const bomb = gzipSync(JSON.stringify({ model: "m", pad: "x".repeat(100_000) }));
    assert.ok(bomb.length < 4096);
    const init = { body: bomb, headers: { "content-encoding": "gzip" }, cf: CITIES.London };
    const { resp, body, region } = await send(init);
    assert.equal(resp.status, 413);
    assert.equal(region, null);
    const { error } = JSON.parse(body);
    assert.equal(error.code, "request_too_large");
    assert.match(error.message, /decodes to over this API's limit of 4096 bytes/);
  });

  test("a bomb is a 413 before it is decoded", async () => {
    // 256 MiB of zeros in 260 KB: decoded whole, it took 256 MiB of the isolate's 128 MB; fed
    // a slice at a time, the first slices are over the limit (body.test.js counts the bytes
    // fed: work bounded, not timed).
    const regions = [regionEntry("eu-central", ...COORDS["eu-central"], "")]; // never reached
    const w = await startWorker({ FALLBACK_TABLE: { regions } }); // MAX_BODY_BYTES: 4 MiB
    started.push(w);
    const bomb = gzipSync(Buffer.alloc(256 << 20));
    const resp = await w.dispatchFetch("https://api.example.com/v1/chat/completions", {
      method: "POST",
      body: bomb,
      headers: { "content-encoding": "gzip" },
      cf: CITIES.London,
    });
    assert.equal(resp.status, 413);
    assert.match((await resp.json()).error.message, /decodes to over this API's limit/);
  });

  test("not what its header says, or a coding it cannot undo: routed on location", async () => {
    for (const [coding, body] of [
      ["gzip", "not gzip"],
      ["gzip", Buffer.concat([gzipSync(raw), Buffer.from("junk")])], // the gateway's 400
      ["br", "\x0b\x02\x80{}\x03"],
      // Those the gateway refuses with a 415 (gateway/http/encoding.py) are not read either.
      ["x-gzip", gzipSync(raw)],
      ["gzip, deflate", deflateSync(gzipSync(raw))],
      ["gzip, identity", gzipSync(raw)],
    ]) {
      const init = { body, headers: { "content-encoding": coding }, cf: CITIES.Singapore };
      const { resp, region, req } = await send(init);
      assert.equal(resp.status, 200);
      assert.equal(region, "ap-southeast", "the nearest region: it answers in its own words");
      assert.equal(req.headers["content-encoding"], coding);
    }
  });
});

describe("/v1/models", () => {
  test("lists every region's models, in the gateway's shape", async () => {
    const before = Object.values(gw).reduce((n, g) => n + g.requests.length, 0);
    const asked = Math.floor(Date.now() / 1000);
    const resp = await mf.dispatchFetch("https://api.example.com/v1/models", {
      cf: CITIES.Singapore,
    });
    const answered = Math.ceil(Date.now() / 1000);
    assert.equal(resp.status, 200);
    assert.equal(resp.headers.get("content-type"), "application/json");
    const doc = await resp.json();
    // "created": the answer's time (it was 0, 1970 in a client's list).
    const created = doc.data[0]?.created;
    assert.ok(created >= asked && created <= answered, `created ${created}`);
    assert.deepEqual(doc, {
      object: "list",
      // Sorted; n's only upstream is drained, so it is not listed (as the gateway's list).
      data: ["big", "m", "org/model-x"].map((id) => ({
        id,
        object: "model",
        created,
        owned_by: "geogate",
      })),
    });
    assert.equal(
      Object.values(gw).reduce((n, g) => n + g.requests.length, 0),
      before,
      "answered by the Worker",
    );
    assert.equal(routeFields(resp.headers.get("geogate-route")).table, "fallback");
  });

  test("/v1/models/{id} goes to a region that serves the model", async () => {
    for (const [path, region] of [
      ["/v1/models/big", "eu-central"],
      ["/v1/models/org/model-x", "us-east"],
      ["/v1/models/org%2Fmodel-x", "us-east"],
    ]) {
      const { resp, region: hit } = await send({ method: "GET", cf: CITIES.Singapore }, path);
      assert.equal(resp.status, 200, path);
      assert.equal(hit, region, path);
    }
    const { resp } = await send({ method: "GET", cf: CITIES.Singapore }, "/v1/models/nope");
    assert.equal(resp.status, 404);
  });
});

test("a request that names no model is worded without one", async () => {
  const regions = [
    {
      id: "eu-central",
      latitude: 50.11,
      longitude: 8.68,
      url: gw["eu-central"].url,
      upstreams: [{ id: "e", models: ["m"], healthy: false }],
    },
  ];
  const w = await startWorker({ FALLBACK_TABLE: { regions, policy: { panic_threshold: 0 } } });
  started.push(w);
  const resp = await w.dispatchFetch("https://api.example.com/v1/files", {
    method: "POST",
    body: "x",
    cf: CITIES.London,
  });
  assert.equal(resp.status, 503);
  const { error } = await resp.json();
  assert.equal(error.code, "no_healthy_upstream");
  assert.match(error.message, /^no region can serve this request now \(unhealthy\)/);
  assert.doesNotMatch(error.message, /null/);
});

test("a residency refusal is a 403 only where nothing could be routed and a model is named", async () => {
  const policy = { residency: [{ name: "uk", countries: ["GB"], regions: ["eu-central"] }] };
  // eu-central, the rule's region, has no gateway URL: its request is routed there, and then
  // has nowhere to go; the table's to mend, not a refusal of the model (a 503).
  const noUrl = await startWorker({
    FALLBACK_TABLE: {
      policy,
      regions: [
        regionEntry("eu-central", ...COORDS["eu-central"], ""),
        regionEntry("us-east", ...COORDS["us-east"], gw["us-east"].url),
      ],
    },
  });
  started.push(noUrl);
  const chat = { method: "POST", body: JSON.stringify({ model: "m" }), cf: CITIES.London };
  let resp = await noUrl.dispatchFetch("https://api.example.com/v1/chat/completions", chat);
  assert.equal(resp.status, 503);
  assert.equal((await resp.json()).error.code, "no_healthy_upstream");
  // No model named (a body the Worker cannot read): the rule keeps London from us-east, and
  // that says nothing of a model: a 503, not "model ... is not served"
  const usOnly = await startWorker({
    FALLBACK_TABLE: {
      policy,
      regions: [
        { ...regionEntry("eu-central", ...COORDS["eu-central"], gw["eu-central"].url), upstreams: [] },
        regionEntry("us-east", ...COORDS["us-east"], gw["us-east"].url),
      ],
    },
  });
  started.push(usOnly);
  const files = { method: "POST", body: "x", cf: CITIES.London };
  resp = await usOnly.dispatchFetch("https://api.example.com/v1/files", files);
  assert.equal(resp.status, 503);
  assert.equal((await resp.json()).error.code, "no_healthy_upstream");
});

test("/v1/models leaves out what a residency rule keeps the client from, as the gateway's", async () => {
  // GB's clients may use eu-central only; "us-only" is served in us-east alone.
  const region = (id, models) => regionEntry(id, ...COORDS[id], gw[id].url, models);
  const w = await startWorker({
    FALLBACK_TABLE: {
      policy: { residency: [{ name: "uk", countries: ["GB"], regions: ["eu-central"] }] },
      regions: [region("eu-central", ["m"]), region("us-east", ["m", "us-only"])],
    },
  });
  started.push(w);
  const list = async (city) => {
    const resp = await w.dispatchFetch("https://api.example.com/v1/models", { cf: CITIES[city] });
    return (await resp.json()).data.map((m) => m.id);
  };
  // Listed, a London client's request for it was a 503 (the rule leaves it no region).
  assert.deepEqual(await list("London"), ["m"]);
  assert.deepEqual(await list("New York"), ["m", "us-only"]);
  // Asked for anyway: refused for good (403), not a 503 whose Retry-After the SDKs wait out
  // twice for the same answer, as the gateway refuses it.
  const resp = await w.dispatchFetch("https://api.example.com/v1/chat/completions", {
    method: "POST",
    body: JSON.stringify({ model: "us-only", messages: [] }),
    cf: CITIES.London,
  });
  assert.equal(resp.status, 403);
  assert.equal(resp.headers.get("retry-after"), null);
  const { error } = await resp.json();
  assert.equal(error.code, "model_not_available_in_region");
  assert.equal(error.param, "model");
  assert.match(error.message, /^model "us-only" is not served to clients here: residency rule uk/);
});
