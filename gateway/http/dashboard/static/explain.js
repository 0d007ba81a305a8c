// "Routing explained": the router's decision for a client IP or a country, rendered from the
// same explain output as GET /explain on the ops listener.
import { api, fmt, h } from "./util.js";

export async function explainTo(out, where, model) {
  const q = new URLSearchParams({ model });
  if (/[.:]/.test(where)) q.set("ip", where);
  else q.set("country", where.toUpperCase());
  out.replaceChildren(h("p", { class: "muted" }, "…"));
  try {
    const e = await api(`/dashboard/api/explain?${q}`);
    out.replaceChildren(...render(e).filter(Boolean));
  } catch (err) {
    out.replaceChildren(h("p", { class: "error" }, err.message));
  }
}

function render(e) {
  const loc = e.location;
  const d = e.decision;
  const place = [loc.city, loc.country, loc.continent].filter(Boolean).join(", ") || "unknown place";
  const chosen = d.candidates[0]?.upstream;
  const rows = d.candidates.map((c, i) =>
    h("tr", { class: i === 0 ? "chosen" : "" },
      h("td", {}, i === 0 ? "→ " + c.upstream : c.upstream), h("td", {}, c.region),
      h("td", { class: "num" }, fmt(c.score_ms, 1)),
      h("td", { class: "num" }, `${fmt(c.net_ms, 1)} (${c.net_source})`),
      h("td", { class: "num" }, `${fmt(c.load_ms, 1)} (${c.load_source})`),
      h("td", { class: "num" }, c.bias_ms), h("td", { class: "num" }, c.weight),
      h("td", {}, (c.healthy ? "yes" : "no") + (c.standby ? " (standby)" : ""))));
  return [
    h("p", {}, `Client: ${place} (${fmt(loc.latitude, 2)}, ${fmt(loc.longitude, 2)}), source ${loc.source}`),
    h("p", {}, h("b", {}, chosen ? `Routed to ${chosen}` : `Not routed: ${d.outcome}`),
      ` — reason ${d.reason}` + (d.residency ? `, residency rule ${d.residency}` : "") +
      (d.band.length > 1 ? `; within the tolerance band: ${d.band.join(", ")}` : "")),
    h("p", { class: "muted small" }, `geogate-route: ${e.header}`),
    d.candidates.length ? h("table", {},
      h("thead", {}, h("tr", {}, ...["candidate", "region", "score ms", "network ms", "load ms",
        "bias", "weight", "healthy"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ...rows)) : null,
    d.excluded.length ? h("p", { class: "muted" }, "Excluded: " +
      d.excluded.map((x) => `${x.upstream} (${x.region}): ${x.reason}`).join("; ")) : null,
  ];
}
