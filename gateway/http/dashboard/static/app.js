// The dashboard page: log in, follow the live stream (one server-sent event a second, the same
// for every page), draw, and act through the admin API with a confirmation that names the
// traffic that will move.
import { api, fmt, h, pct, setCsrf, toast } from "./util.js";
import { WorldMap } from "./map.js";
import { RegionChart, REGION, UPSTREAM, sparkline } from "./charts.js";
import { confirmChange } from "./actions.js";
import { explainTo } from "./explain.js";

const HISTORY = 300;  // points kept: the sampler's DASHBOARD_HISTORY_S
const $ = (id) => document.getElementById(id);

let stream = null;
let points = [];
let state = null;
const map = new WorldMap($("map"));
const charts = [
  new RegionChart($("chart-rps"), REGION.rps),
  new RegionChart($("chart-ttft"), REGION.ttftP99),
  new RegionChart($("chart-err"), REGION.failed),
];

function show(view) {
  $("login-view").hidden = view !== "login";
  $("dash-view").hidden = view !== "dash";
}

async function boot() {
  try {
    const me = await api("/dashboard/api/session");
    if (me.operator) return start(me);
    show("login");
  } catch (err) {
    show("login");
    $("login-error").textContent = err.message;  // e.g. no operator has a token yet
  }
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("token");
  $("login-error").textContent = "";
  try {
    const me = await api("/dashboard/login", { method: "POST", body: { token: input.value } });
    input.value = "";  // the cookie holds the session now; the token is not kept
    start(me);
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("/dashboard/logout", { method: "POST" });
  } catch (err) {
    // Ended on this gateway only (Redis away): say so, and stay, so that it can be sent again.
    if (err.status === 503) { toast(err.message, true); return; }
  }
  stream?.close();
  setCsrf(null);
  location.reload();
});

async function start(me) {
  setCsrf(me.csrf);
  $("who").textContent = `operator: ${me.operator}`;
  $("logout").hidden = false;
  show("dash");
  await map.load();
  connect();
}

function connect() {
  stream?.close();
  stream = new EventSource("/dashboard/events");
  const live = $("live");
  stream.addEventListener("hello", (ev) => {
    const data = JSON.parse(ev.data);
    points = data.history.slice(-HISTORY);
    render(data.state);
  });
  stream.addEventListener("tick", (ev) => {
    const data = JSON.parse(ev.data);
    points.push(data.point);
    if (points.length > HISTORY) points.splice(0, points.length - HISTORY);
    render(data.state);
  });
  stream.addEventListener("state", (ev) => render(JSON.parse(ev.data).state));
  stream.addEventListener("open", () => { live.textContent = "live"; live.className = "pill ok"; });
  stream.addEventListener("error", async () => {
    live.textContent = "reconnecting…";
    live.className = "pill bad";
    if (stream.readyState === EventSource.CLOSED) {
      // Closed for good: the session ended (401) or the gateway is gone. Ask which.
      const me = await api("/dashboard/api/session").catch(() => ({ operator: "?" }));
      if (me.operator) setTimeout(connect, 2000);
      else location.reload();
    }
  });
}

function render(next) {
  state = next;
  const g = state.gateway;
  $("gateway").textContent =
    `gateway ${g.region} · origin ${g.origin} · config v${g.version}` +
    // The worker's label (its /metrics `worker`), not a rank: "worker 2 of 2" read wrong.
    (g.worker === null ? "" : ` · worker ${g.worker} (one of ${g.workers}): its own traffic`) +
    (g.draining ? " · DRAINING" : "");
  $("updated").textContent = `updated ${state.at.slice(11, 19)} UTC`;
  const sh = state.shared;
  const shared = $("shared");
  shared.textContent = sh.mode === "local" ? "state: this gateway only"
    : sh.mode === "fresh" && sh.refused ? "shared state: fleet config refused"
      : `shared state: ${sh.mode}`;
  shared.className = sh.mode === "stale" || sh.refused ? "pill bad" : "pill ok";
  const banner = sharedBanner(sh, g.version);
  const stale = $("stale");
  stale.hidden = !banner;
  stale.textContent = banner;
  map.render(state);
  renderRegions();
  renderUpstreams();
  renderAudit();
  for (const c of charts) c.render(points, state.regions);
  const models = $("explain-model");
  const listed = Array.from(models.options, (o) => o.value).join("\n");
  if (listed !== state.models.join("\n")) {  // another set of models, not only another count
    const chosen = models.value;
    models.replaceChildren(...state.models.map((m) => h("option", { value: m }, m)));
    if (state.models.includes(chosen)) models.value = chosen;
  }
}

// What /readyz says after "degraded:", in words an operator acts on: on what this gateway
// routes while Redis is away (its own file until it first synced: none of the fleet's drains
// and weights), and a fleet document in Redis it refuses (a hand edit), which left the page
// saying "fresh" while every change was refused.
function sharedBanner(sh, version) {
  const said = [];
  if (sh.mode === "stale") {
    said.push(sh.synced === false
      ? `Shared state stale since ${sh.stale_since}: Redis is unreachable, and this gateway has ` +
        "not been in sync with the fleet since it started: it routes on its own config file, " +
        "without the fleet's drains and weights; changes cannot be applied until Redis is back."
      : `Shared state stale since ${sh.stale_since}: Redis is unreachable. This gateway routes ` +
        "on its last snapshot; changes cannot be applied until it is back.");
  }
  if (sh.refused) {
    said.push(`Ignoring the fleet config in Redis (${sh.refused}): this gateway routes on ` +
      (version ? `config v${version}` : "its own config file") + ". Every gateway may refuse " +
      "the same document (a hand edit in Redis); changes are refused until Redis holds one " +
      "it can read: `geogate ctl restore` puts this gateway's back.");
  }
  return said.join(" ");
}

function renderRegions() {
  // Requests refused before any region was chosen (a drained region's clients, a model with
  // no upstream left): counted in no region's card, so a card of their own while there are any.
  const unrouted = state.unrouted_rps > 0
    ? h("div", { class: "region-card down", "data-region": "-", "data-state": "down" },
      h("div", { class: "row" },
        h("span", { class: "name" }, "not routed"),
        h("span", { class: "muted" }, "no upstream allowed for the model or rule, or full"),
        h("span", { class: "badge down" }, "refused")),
      h("div", { class: "stats" },
        `${fmt(state.unrouted_rps, 1)} req/s refused (5xx) before any region was chosen`))
    : null;
  $("regions").replaceChildren(...state.regions.map((r) => {
    const all = r.upstreams.map((id) => state.upstreams.find((u) => u.id === id));
    // The region's own drain (an upstream drained on its own is not the region drained).
    const drained = r.drained ?? (all.length > 0 && all.every((u) => u?.state === "drained"));
    return h("div", { class: `region-card ${r.state}`, "data-region": r.id, "data-state": r.state },
      h("div", { class: "row" },
        h("span", { class: "name" }, r.id), h("span", { class: "muted" }, r.name),
        h("span", { class: `badge ${r.state}` }, r.state),
        h("span", { class: "spacer" }),
        all.length ? regionButton(r, drained) : null),
      h("div", { class: "stats" },
        `${fmt(r.rps, 1)} req/s · errors ${pct(r.error_rate)} · TTFT p50 ${fmt(r.ttft_p50_ms, 0, " ms")}` +
        ` / p99 ${fmt(r.ttft_p99_ms, 0, " ms")} · in-flight ${r.in_flight} · ` +
        `${r.upstreams.length} upstream(s)`));
  }), ...(unrouted ? [unrouted] : []));
}

function votes(u) {
  const entries = Object.entries(u.votes || {});
  if (!entries.length) return h("span", { class: "muted" }, "–");
  const down = entries.filter(([, ok]) => !ok).map(([gw]) => gw);
  const text = `${entries.length - down.length}/${entries.length} see it up`;
  return h("div", { title: down.length ? `sees it down: ${down.join(", ")}` : "all see it up",
    class: down.length ? "votes error" : "votes" },
  text + (down.length ? ` (down: ${down.join(", ")})` : ""));
}

function renderUpstreams() {
  const rows = state.upstreams.map((u) => {
    // Its own drain: the state also says drained when its region is.
    const drained = u.drained ?? u.state === "drained";
    return h("tr", { class: `state-${u.state}`, "data-upstream": u.id, "data-state": u.state },
      h("td", {}, h("b", {}, u.id), h("div", { class: "muted small" }, u.region)),
      h("td", {}, h("span", { class: `badge ${u.state}` }, u.state),
        u.why ? h("div", { class: "why" }, u.why) : null,
        u.times_ejected ? h("div", { class: "muted small" }, `ejected ${u.times_ejected}× so far`) : null),
      h("td", {}, votes(u)),
      h("td", { class: "num" }, fmt(u.rtt_ms, 1, " ms")),
      h("td", { class: "num" }, fmt(u.queue_depth, 0)),
      h("td", { class: "num" }, `${fmt(u.ttft_p50_ms, 0)} / ${fmt(u.ttft_p99_ms, 0)} ms`),
      h("td", { class: "num" }, u.in_flight),
      h("td", { class: "num" }, fmt(u.rps, 1)),
      h("td", { class: "num" }, pct(u.error_rate)),
      h("td", { class: "num" }, u.weight),
      h("td", { class: "num" }, `${u.bias_ms} ms`),
      h("td", {},
        sparkline(points, u.id, UPSTREAM.rps),
        sparkline(points, u.id, UPSTREAM.ttftP50, "ttft")),
      actions(u, drained));
  });
  document.querySelector("#upstreams tbody").replaceChildren(...rows);
}

// The rows are rebuilt each second; their buttons are not (a click that straddles a redraw
// must still land): one cell per upstream and the values it acts on, moved into each new row.
const cells = new Map();
function actions(u, drained) {
  const key = `${u.id}|${drained}|${u.weight}|${u.bias_ms}`;
  let cell = cells.get(key);
  if (!cell) {
    cell = h("td", {}, h("div", { class: "row nowrap" },
      h("button", { class: "small", type: "button", "data-action": "weight",
        onclick: () => confirmChange({ upstream: u.id, field: "weight", value: u.weight }) },
        "Weight…"),
      h("button", { class: "small", type: "button", "data-action": "bias",
        onclick: () => confirmChange({ upstream: u.id, field: "bias_ms", value: u.bias_ms }) },
        "Bias…"),
      h("button", { class: "small", type: "button", "data-action": drained ? "undrain" : "drain",
        onclick: () => confirmChange({ upstream: u.id, changes: { drained: !drained } }) },
        drained ? "Undrain" : "Drain")));
    for (const k of cells.keys()) if (k.startsWith(`${u.id}|`)) cells.delete(k);
    cells.set(key, cell);
  }
  return cell;
}

function regionButton(r, drained) {
  const key = `region|${r.id}|${drained}`;
  let button = cells.get(key);
  if (!button) {
    button = h("button", {
      class: "small", type: "button", "data-action": drained ? "undrain-region" : "drain-region",
      onclick: () => confirmChange({ region: r.id, changes: { drained: !drained } }),
    }, drained ? "Undrain region" : "Drain region");
    cells.delete(`region|${r.id}|${!drained}`);
    cells.set(key, button);
  }
  return button;
}

function renderAudit() {
  $("audit-error").textContent = state.audit_error || "";
  const rows = (state.audit || []).map((e) =>
    h("tr", { "data-who": e.who },
      h("td", {}, e.when), h("td", {}, h("b", {}, e.who)), h("td", {}, e.what),
      h("td", { class: "why" }, `${e.before} → ${e.after}`)));
  document.querySelector("#audit tbody").replaceChildren(...rows);
}

$("explain").addEventListener("submit", (ev) => {
  ev.preventDefault();
  explainTo($("explain-out"), $("explain-where").value.trim(), $("explain-model").value);
});
window.addEventListener("resize", () => charts.forEach((c) => c.resize()));
window.addEventListener("DOMContentLoaded", boot);
