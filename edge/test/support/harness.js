// Helpers for the Worker's tests: the Worker in workerd (Miniflare) with wrangler.jsonc's
// settings, and loopback sockets that misbehave as a hung or a closed gateway would.
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

export const EDGE = fileURLToPath(new URL("../..", import.meta.url));

/** JSON with comments (wrangler.jsonc): comments dropped, strings kept whole. */
export function parseJsonc(text) {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      out += text.slice(start, i + 1);
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2) + 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out);
}

// As wrangler bundles the Worker: every .js file is an ES module (package.json "type").
const MODULES = {
  modules: true,
  modulesRoot: EDGE,
  modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
};

/** Miniflare once it serves; if it cannot start, stopped, so no test run hangs on it. */
async function ready(mf) {
  try {
    await mf.ready;
  } catch (err) {
    await mf.dispose().catch(() => {});
    throw err;
  }
  return mf;
}

export function wranglerConfig() {
  return parseJsonc(readFileSync(join(EDGE, "wrangler.jsonc"), "utf8"));
}

/**
 * The Worker as wrangler.jsonc describes it, its vars overridden by `vars` (a var set to
 * undefined is removed). The example's gateway URLs are never used: tests reach loopback only.
 */
export async function startWorker(vars = {}) {
  const cfg = wranglerConfig();
  const bindings = { ...cfg.vars, ROUTING_TABLE_URLS: [], FALLBACK_TABLE: undefined, ...vars };
  for (const [k, v] of Object.entries(bindings)) if (v === undefined) delete bindings[k];
  return ready(
    new Miniflare({
      ...MODULES,
      scriptPath: join(EDGE, cfg.main),
      compatibilityDate: cfg.compatibility_date,
      compatibilityFlags: cfg.compatibility_flags ?? [],
      bindings,
    }),
  );
}

/**
 * The Worker (as startWorker makes it) behind a client played by another Worker in the same
 * workerd (test/support/client-worker.js), which can go away mid-request. A client that
 * disconnects from workerd's own HTTP listener is not noticed while the Worker has not
 * answered (workerd's request is not cancelled, request.signal stays quiet: workerd PR #5062,
 * "doesn't seem to work locally"); a caller Worker that aborts its call cancels the Worker's
 * request as Cloudflare's front line does for a client gone (workerd's own
 * request-signal-enabled test does the same). dispatchFetch reaches the client Worker.
 */
export async function startBehindClient(vars = {}) {
  const cfg = wranglerConfig();
  const bindings = { ...cfg.vars, ROUTING_TABLE_URLS: [], FALLBACK_TABLE: undefined, ...vars };
  for (const [k, v] of Object.entries(bindings)) if (v === undefined) delete bindings[k];
  return ready(
    new Miniflare({
      workers: [
        {
          ...MODULES,
          name: "client",
          scriptPath: join(EDGE, "test", "support", "client-worker.js"),
          compatibilityDate: cfg.compatibility_date,
          serviceBindings: { EDGE: "edge" },
        },
        {
          ...MODULES,
          name: "edge",
          scriptPath: join(EDGE, cfg.main),
          compatibilityDate: cfg.compatibility_date,
          compatibilityFlags: cfg.compatibility_flags ?? [],
          bindings,
        },
      ],
    }),
  );
}

/** A test-only Worker from edge/test/support (it imports the Worker's own modules). */
export async function startHarness(script) {
  const cfg = wranglerConfig();
  return ready(
    new Miniflare({
      ...MODULES,
      scriptPath: join(EDGE, "test", "support", script),
      compatibilityDate: cfg.compatibility_date,
    }),
  );
}

/** A loopback port that accepts connections and never answers: a hung gateway. */
export async function blackhole() {
  const sockets = new Set();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A regional gateway played on loopback: `answer(req)` says what to send for each request
 * (`{status, headers, body, delayMs}`; null: hold the request and never answer, as a hung
 * gateway; `parts` instead of `body`: written one at a time, and with `cut` the connection is
 * then destroyed, as a gateway that died mid-body, with `hold` the body then never ends, as a
 * gateway that stalled mid-body), and every request is kept in `requests`
 * with its headers, body, arrival time and `closedAt`: when its exchange ended (the answer
 * sent, or the Worker's side of the connection gone), null while it lasts.
 */
export async function fakeGateway(answer) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const seen = {
      method: req.method,
      path: req.url,
      headers: req.headers,
      body: Buffer.concat(chunks).toString(),
      at: Date.now(),
      closedAt: null,
    };
    requests.push(seen);
    res.on("close", () => {
      seen.closedAt = Date.now();
    });
    const a = await answer(seen);
    if (a === null) return;
    if (a.delayMs) await new Promise((resolve) => setTimeout(resolve, a.delayMs));
    res.writeHead(a.status ?? 200, { "content-type": "application/json", ...a.headers });
    if (a.parts) {
      for (const part of a.parts) {
        if (seen.closedAt !== null) return; // the Worker went away: nobody to write to
        res.write(part);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      if (a.cut) res.socket?.destroy();
      else if (!a.hold) res.end();
      return;
    }
    res.end(typeof a.body === "string" ? a.body : JSON.stringify(a.body ?? {}));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A loopback URL nothing listens on: connections are refused at once. */
export async function closedUrl() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

const city = (latitude, longitude, country, continent, name, colo) => ({
  latitude,
  longitude,
  country,
  continent,
  city: name,
  colo,
});

// request.cf as Cloudflare gives it (coordinates are strings) for a client in each city.
export const CITIES = {
  London: city("51.50740", "-0.12780", "GB", "EU", "London", "LHR"),
  Singapore: city("1.28970", "103.85010", "SG", "AS", "Singapore", "SIN"),
  "New York": city("40.71280", "-74.00600", "US", "NA", "New York", "EWR"),
  Sydney: city("-33.86880", "151.20930", "AU", "OC", "Sydney", "SYD"),
  "São Paulo": city("-23.55050", "-46.63330", "BR", "SA", "São Paulo", "GRU"),
};

/** The fields of a geogate-route header, e.g. {tier: "edge", region: "eu-central", ...}. */
export function routeFields(header) {
  return Object.fromEntries((header ?? "").split(";").map((p) => p.trim().split("=")));
}

/**
 * A routing table's region as a gateway's /routing-table gives it: one upstream, `ID-1`,
 * serving `models`.
 * @param {string} id @param {number} latitude @param {number} longitude @param {string} url
 * @param {string[]} [models]
 */
export function regionEntry(id, latitude, longitude, url, models = ["m"]) {
  return { id, latitude, longitude, url, upstreams: [{ id: `${id}-1`, models }] };
}
