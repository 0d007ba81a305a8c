// src/points.js is written by scripts/gen_edge_cases.py from geodb/data's CSVs (a Worker
// reads no files): compared with the CSVs here too, so a CSV changed without regenerating
// fails the Worker's own tests, not only the Python ones (tests/edge/test_edge_cases.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { clientOf, continentOf, referencePoint } from "../src/client.js";
import { CONTINENT_POINTS, COUNTRY_POINTS } from "../src/points.js";
import { EDGE } from "./support/harness.js";

/** A geodb/data CSV's rows, comment lines skipped (as geodb.countries.data_rows reads it). */
function rows(name) {
  const text = readFileSync(join(EDGE, "..", "geodb", "data", name), "utf8");
  const [head, ...lines] = text.split("\n").filter((l) => l && !l.startsWith("#"));
  const keys = head.split(",");
  return lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [keys[i], v])));
}

test("points.js is geodb/data/countries.csv and continents.csv (scripts/gen_edge_cases.py)", () => {
  const countries = Object.fromEntries(
    rows("countries.csv").map((r) => [
      r.country,
      [r.continent, Number(r.latitude), Number(r.longitude)],
    ]),
  );
  const continents = Object.fromEntries(
    rows("continents.csv").map((r) => [r.continent, [Number(r.latitude), Number(r.longitude)]]),
  );
  const stale = "out of date: run scripts/gen_edge_cases.py";
  assert.deepEqual({ ...COUNTRY_POINTS }, countries, stale);
  assert.deepEqual({ ...CONTINENT_POINTS }, continents, stale);
});

test("a country's point, else its continent's, as the gateway's GeoIP (geodb/reader.py)", () => {
  assert.deepEqual(referencePoint("de", null), {
    latitude: 50.11,
    longitude: 8.68,
    continent: "EU",
  });
  assert.deepEqual(referencePoint("US", "NA"), {
    latitude: 39.83,
    longitude: -98.58,
    continent: "NA",
  });
  const oc = CONTINENT_POINTS.OC;
  assert.deepEqual(referencePoint("T1", "OC"), {
    latitude: oc[0],
    longitude: oc[1],
    continent: "OC",
  });
  assert.equal(referencePoint("T1", null), null);
  assert.equal(referencePoint(null, null), null);
  assert.equal(referencePoint("constructor", "__proto__"), null);
});

test("coordinates without a continent take the country's", () => {
  assert.equal(continentOf("gb"), "EU");
  assert.equal(continentOf("T1"), null);
  assert.equal(continentOf(null), null);
  const request = /** @type {Request} */ (
    /** @type {unknown} */ ({
      cf: { country: "GB", latitude: "51.5", longitude: "-0.13" },
      headers: new Headers({ "cf-connecting-ip": "81.2.69.142" }),
    })
  );
  const settings = /** @type {any} */ ({ defaultLatitude: 0, defaultLongitude: 0 });
  const c = clientOf(request, settings);
  assert.equal(c.continent, "EU");
  assert.equal(c.facts?.continent, "EU");
});
