// The Worker's settings (src/config.js) on their own, in Node: what each bad value says. A bad
// setting must be one clear error naming the variable, not a Worker that routes to nowhere.
// In workerd, /healthz and every request then answer 500 edge_misconfigured (worker.test.js).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConfigError, settings } from "../src/config.js";
import { wranglerConfig } from "./support/harness.js";

const region = (id, extra = {}, upstream = {}) => ({
  id,
  latitude: 50.11,
  longitude: 8.68,
  url: `https://${id}.example.com`,
  upstreams: [{ id: `${id}-1`, models: ["m"], ...upstream }],
  ...extra,
});

/** The ConfigError's message for `env`, or "" when it is a good config. */
function problem(env) {
  try {
    settings(env);
    return "";
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
}

test("no table source at all is refused: not a Worker whose every answer is a 503", () => {
  assert.match(problem({}), /^no routing table: set ROUTING_TABLE_URLS .* or FALLBACK_TABLE$/);
  assert.match(problem({ ROUTING_TABLE_URLS: "[]" }), /^no routing table/);
});

test("wrangler.jsonc's own vars are a good config, with the region of each source", () => {
  const s = settings({ ...wranglerConfig().vars });
  assert.equal(s.table.sources.length, 3);
  // The ops hosts are not the regions' hosts: the region each source is for is named.
  const eu = s.table.sources.find((u) => u.includes("eu-central"));
  assert.equal(s.table.regionOf?.get(eu), "eu-central");
  assert.ok(s.table.fallback?.regions.get("eu-central")?.url);
});

describe("ROUTING_TABLE_URLS", () => {
  test("a list, a JSON list, comma-separated text, or an object by region", () => {
    const a = "https://ops.a.example.com/routing-table";
    const b = "http://10.0.0.2:9090/routing-table";
    for (const raw of [[a, b], JSON.stringify([a, b]), `${a}, ${b}`]) {
      const s = settings({ ROUTING_TABLE_URLS: raw });
      assert.deepEqual(s.table.sources, [a, b]);
      assert.equal(s.table.regionOf?.size, 0);
    }
    for (const raw of [
      { "eu-central": a, "us-east": b },
      JSON.stringify({ "eu-central": a, "us-east": b }),
    ]) {
      const s = settings({ ROUTING_TABLE_URLS: raw });
      assert.deepEqual(s.table.sources, [a, b]);
      assert.deepEqual(
        [...(s.table.regionOf ?? [])],
        [
          [a, "eu-central"],
          [b, "us-east"],
        ],
      );
    }
  });

  const bad = {
    "not JSON": ["[not json", /ROUTING_TABLE_URLS: not JSON/],
    "a list of numbers": ["[1,2]", /ROUTING_TABLE_URLS = 1: want/],
    "ftp://": [
      ["ftp://x/routing-table"],
      /ROUTING_TABLE_URLS: "ftp:\/\/x\/routing-table" is not http/,
    ],
    "a space in the host": [["https://exa mple.com/t"], /"https:\/\/exa mple.com\/t" is not a URL/],
    "port 99999": [["https://example.com:99999/t"], /is not a URL/],
    "no scheme": [["ops.example.com/t"], /"ops.example.com\/t" is not a URL/],
    credentials: [["https://u:p@ops.example.com/t"], /carries credentials/],
    "a region's URL not a string": [{ eu: 1 }, /ROUTING_TABLE_URLS\["eu"\] = 1: want/],
    "a region's URL bad": [{ eu: "nope" }, /ROUTING_TABLE_URLS\["eu"\]: "nope" is not a URL/],
    "an empty region id": [{ "": "https://ops.example.com/t" }, /a region id is empty/],
    "a number": ["7", /ROUTING_TABLE_URLS: "7" is not a URL/],
    "a URL twice": [["https://a.example/t", "https://a.example/t"], /listed twice/],
  };
  for (const [name, [raw, want]] of Object.entries(bad)) {
    test(`refused: ${name}`, () => {
      assert.match(problem({ ROUTING_TABLE_URLS: raw }), want);
    });
  }
});

describe("FALLBACK_TABLE", () => {
  const eu = region("eu-central");
  const bad = {
    "a region URL with no scheme": [
      [region("eu", { url: "eu.example.com" })],
      /regions\[0\]\.url "eu.example.com" is not a URL/,
    ],
    "a region URL with no host": [
      [region("eu", { url: "http://" })],
      /regions\[0\]\.url "http:\/\/" is not a URL/,
    ],
    "a region URL with a path": [
      [region("eu", { url: "https://eu.example.com/v1" })],
      /regions\[0\]\.url .* has a path/,
    ],
    "a region URL not http": [[region("eu", { url: "ftp://eu.example.com" })], /is not http/],
    "a latitude past 90": [
      [region("eu", { latitude: 500 })],
      /regions\[0\]\.latitude = 500: want from -90 to 90/,
    ],
    "a longitude past 180": [
      [region("eu", { longitude: -181 })],
      /regions\[0\]\.longitude = -181: want from -180 to 180/,
    ],
    "a negative weight": [
      [region("eu", {}, { weight: -1 })],
      /regions\[0\]\.upstreams\[0\]\.weight = -1: want 0 or more/,
    ],
    "slots under 1": [
      [region("eu", {}, { slots: -5 })],
      /regions\[0\]\.upstreams\[0\]\.slots = -5: want 1 or more/,
    ],
    "a region id twice": [
      [eu, region("eu-central", { url: "https://us.example.com" })],
      /regions\[1\]\.id "eu-central" is listed twice/,
    ],
    "an upstream id twice": [
      [eu, region("us-east", {}, { id: "eu-central-1" })],
      /regions\[1\]\.upstreams\[0\]\.id "eu-central-1" is listed twice/,
    ],
  };
  for (const [name, [regions, want]] of Object.entries(bad)) {
    test(`refused: ${name}`, () => {
      const message = problem({ FALLBACK_TABLE: JSON.stringify({ regions }) });
      assert.match(message, /^FALLBACK_TABLE: /);
      assert.match(message, want);
    });
  }

  test("refused: a residency rule for a region it does not have", () => {
    const rule = { name: "eu", countries: ["DE"], regions: ["eu-centrl"] };
    const doc = { policy: { residency: [rule] }, regions: [eu] };
    assert.match(
      problem({ FALLBACK_TABLE: doc }),
      /^FALLBACK_TABLE: policy\.residency\[0\]\.regions names "eu-centrl", which is not among/,
    );
  });

  test("refused: a region ROUTING_TABLE_URLS names that it does not have", () => {
    const urls = {
      "eu-central": "https://ops.eu.example.com/routing-table",
      "us-eats": "https://ops.us.example.com/routing-table",
    };
    const doc = { regions: [eu, region("us-east")] };
    const message = problem({ ROUTING_TABLE_URLS: urls, FALLBACK_TABLE: doc });
    assert.match(message, /^ROUTING_TABLE_URLS\["us-eats"\]: FALLBACK_TABLE has no region /);
    assert.match(message, /\(its regions: eu-central, us-east\)$/);
    urls["us-east"] = urls["us-eats"];
    delete urls["us-eats"];
    assert.equal(problem({ ROUTING_TABLE_URLS: urls, FALLBACK_TABLE: doc }), "");
    // With no FALLBACK_TABLE there is nothing to check them against here (src/table.js warns).
    assert.equal(problem({ ROUTING_TABLE_URLS: { "us-eats": urls["us-east"] } }), "");
  });

  // Each passed, and left /healthz at 200 while every request was a 404 or a 403 for good.
  const eu1 = region("eu-central");
  const rule = { name: "eu", continents: ["EU"], regions: ["eu-central"] };
  const policyBad = {
    "upstreams misspelt": [
      { regions: [eu1, { ...region("us"), upstreams: undefined, upstream: [{ id: "us-1" }] }] },
      /^FALLBACK_TABLE: regions\[1\] has "upstream": not a field of it \(id, name, /,
    ],
    "no upstreams anywhere": [
      { regions: [{ ...region("eu"), upstreams: [] }] },
      /^FALLBACK_TABLE: no region lists any upstreams$/,
    ],
    "upstreams not a list": [
      { regions: [{ ...region("eu"), upstreams: { id: "eu-1", models: ["m"] } }] },
      /^FALLBACK_TABLE: regions\[0\]\.upstreams is not a list$/,
    ],
    "a rule with no regions": [
      { regions: [eu1], policy: { residency: [{ ...rule, regions: [] }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\] names no regions$/,
    ],
    "a rule's regions misspelt": [
      { regions: [eu1], policy: { residency: [{ ...rule, regions: undefined, region: ["x"] }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\] has "region": not a field of it/,
    ],
    "a rule's countries misspelt beside its continents": [
      { regions: [eu1], policy: { residency: [{ ...rule, country: ["DE"] }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\] has "country"/,
    ],
    "a policy field misspelt": [
      { regions: [eu1], policy: { panic: 0.5 } },
      /^FALLBACK_TABLE: policy has "panic"/,
    ],
    "a rule for nobody": [
      { regions: [eu1], policy: { residency: [{ name: "x", regions: ["eu-central"] }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\] names no countries and no continents$/,
    ],
    "residency not a list": [
      { regions: [eu1], policy: { residency: rule } },
      /^FALLBACK_TABLE: policy\.residency is not a list$/,
    ],
    "a policy not an object": [{ regions: [eu1], policy: [] }, /^FALLBACK_TABLE: policy is not/],
    "a panic threshold past 1": [
      { regions: [eu1], policy: { panic_threshold: 5 } },
      /^FALLBACK_TABLE: policy\.panic_threshold = 5: want from 0 to 1$/,
    ],
    "a negative tolerance": [
      { regions: [eu1], policy: { tolerance_ms: -3 } },
      /^FALLBACK_TABLE: policy\.tolerance_ms = -3: want 0 or more$/,
    ],
    // A misspelt "policy" dropped its rules: clients routed where a rule forbids them.
    "the policy misspelt": [
      { regions: [eu1], polcy: { residency: [rule] } },
      /^FALLBACK_TABLE: the table has "polcy": not a field of it \(self_region, /,
    ],
    // "modles": a fallback that serves no model, a 404 for every request; "drainde": ignored.
    "an upstream's models misspelt": [
      { regions: [region("eu", {}, { models: undefined, modles: ["m"] })] },
      /^FALLBACK_TABLE: regions\[0\]\.upstreams\[0\] has "modles": not a field of it \(id, /,
    ],
    "an upstream's drain misspelt": [
      { regions: [region("eu", {}, { drainde: true })] },
      /^FALLBACK_TABLE: regions\[0\]\.upstreams\[0\] has "drainde"/,
    ],
    "an upstream serving no model": [
      { regions: [region("eu", {}, { models: [] })] },
      /^FALLBACK_TABLE: regions\[0\]\.upstreams\[0\]\.models is not a list of one or more/,
    ],
    "an upstream's models null": [
      { regions: [region("eu", {}, { models: null })] },
      /^FALLBACK_TABLE: regions\[0\]\.upstreams\[0\]\.models is not a list of one or more/,
    ],
    // It goes into the geogate-route header: "GB—US only" went out garbled.
    "a rule's name that reads as another field": [
      { regions: [eu1], policy: { residency: [{ ...rule, name: "eu; upstream=x" }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\]\.name "eu; upstream=x": 1-64 printable/,
    ],
    "a rule's name no header can carry": [
      { regions: [eu1], policy: { residency: [{ ...rule, name: "GB\u2014US only" }] } },
      /^FALLBACK_TABLE: policy\.residency\[0\]\.name "GB.US only": 1-64 printable ASCII /,
    ],
  };
  for (const [name, [doc, want]] of Object.entries(policyBad)) {
    test(`refused: ${name}`, () => assert.match(problem({ FALLBACK_TABLE: doc }), want));
  }

  test("a good policy is taken, and a region as /routing-table writes it", () => {
    const doc = { regions: [eu1], policy: { residency: [rule], panic_threshold: 1 } };
    assert.equal(problem({ FALLBACK_TABLE: doc }), "");
    const written = { ...eu1, name: "Frankfurt", healthy: true };
    const other = { ...region("us-east"), upstreams: [] }; // served by another region's gateway
    assert.equal(problem({ FALLBACK_TABLE: { regions: [written, other] } }), "");
    // every field /routing-table writes, at the top and in an upstream's row (its state too)
    const row = { ...eu1.upstreams[0], rtt_ms: 1.5, in_flight: 0, kv_usage: null, seen_by: {} };
    Object.assign(row, { ejected_s: 0, ejection_cause: null, times_ejected: 0, fleet_down: false });
    Object.assign(row, { healthy: true, drained: false, last_error: null, ttft_ms: null });
    const top = { self_region: "eu-central", origin: "client", version: 3, worker: 1 };
    Object.assign(top, { shared_state: "local", fleet_config_refused: null });
    const dump = { ...top, policy: { residency: [rule] }, regions: [{ ...eu1, upstreams: [row] }] };
    assert.equal(problem({ FALLBACK_TABLE: dump }), "");
  });

  test("a region with no URL is allowed: the gateways' tables may give it", () => {
    const s = settings({ FALLBACK_TABLE: { regions: [region("eu", { url: undefined })] } });
    assert.equal(s.table.fallback?.regions.get("eu")?.url, "");
  });
});

describe("numbers", () => {
  const table = { FALLBACK_TABLE: { regions: [region("eu")] } };
  // Number() took each: " " and null as 0 (a TABLE_TTL_S of 0: a table fetch per request),
  // true as 1, "0x3" as 3.
  for (const [name, raw] of [
    ["TABLE_TTL_S", " "],
    ["TABLE_TTL_S", null],
    ["MAX_ATTEMPTS", "0x3"],
    ["DEFAULT_LATITUDE", true],
    ["TABLE_TTL_S", "Infinity"],
  ]) {
    test(`refused: ${name} = ${JSON.stringify(raw)}`, () => {
      const said = problem({ ...table, [name]: raw });
      assert.match(said, new RegExp(`^${name} = ${JSON.stringify(raw)}: want a `), said);
    });
  }
  test("a JSON number, or text that is a decimal, is taken", () => {
    for (const raw of [3, "3", "2.5e1", ".5", " 30\n"]) {
      assert.equal(problem({ ...table, TABLE_TTL_S: raw }), "", String(raw));
    }
    assert.equal(settings({ ...table, MAX_ATTEMPTS: "3" }).maxAttempts, 3);
  });
});
