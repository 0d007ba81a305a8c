// Weight, bias, drain and undrain: one dialog that first says which traffic will move (the
// server routes the last minute's requests with and without the change), then applies the
// change through the admin API, which audits it under the logged-in operator's name.
import { api, toast } from "./util.js";

const $ = (id) => document.getElementById(id);
const dialog = $("confirm");
let pending = null;  // { path, changes } of the change on screen
let asked = 0;       // the newest impact request: an older answer that arrives late is dropped

function describe(target) {
  if (target.region) {
    if (target.changes.drained) return `Drain every upstream of region ${target.region}?`;
    // The region's drain only: an upstream an operator drained on its own stays drained.
    return `Undrain region ${target.region} (upstreams drained on their own stay drained)?`;
  }
  if (target.field === "weight") return `Set the weight of ${target.upstream}`;
  if (target.field === "bias_ms") return `Set the bias of ${target.upstream} (ms)`;
  return `${target.changes.drained ? "Drain" : "Undrain"} upstream ${target.upstream}?`;
}

// An empty or unreadable field is no number: Number("") is 0, which made an upstream a
// standby (weight 0) when the field was cleared and Apply pressed.
function changesOf(target) {
  if (!target.field) return target.changes;
  const raw = $("confirm-value").value.trim();
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value)) {
    throw new Error(`give the new ${target.field === "weight" ? "weight" : "bias"} as a number`);
  }
  return { [target.field]: value };
}

async function showImpact(target) {
  let changes;
  try {
    changes = changesOf(target);
  } catch (err) {
    $("confirm-text").textContent = "";
    $("confirm-error").textContent = err.message;
    return;
  }
  const q = new URLSearchParams(target.region ? { region: target.region } : { upstream: target.upstream });
  for (const [k, v] of Object.entries(changes)) q.set(k, String(v));
  const mine = ++asked;
  $("confirm-text").textContent = "Working out which traffic would move…";
  $("confirm-error").textContent = "";
  try {
    const impact = await api(`/dashboard/api/impact?${q}`);
    if (mine === asked) $("confirm-text").textContent = impact.text;
  } catch (err) {
    if (mine === asked) $("confirm-error").textContent = err.message;
  }
}

export function confirmChange(target) {
  pending = target;
  $("confirm-title").textContent = describe(target);
  const row = $("confirm-value-row");
  row.hidden = !target.field;
  if (target.field) {
    $("confirm-value-label").textContent = target.field === "weight" ? "new weight " : "new bias (ms) ";
    $("confirm-value").value = String(target.value);
  }
  $("confirm-ok").textContent = target.field ? "Apply" : describe(target).split(" ")[0];
  dialog.showModal();
  showImpact(target);
}

let typing = null;
$("confirm-value").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => pending && showImpact(pending), 300);
});

$("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));

$("confirm-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!pending) return;
  const target = pending;
  const path = target.region
    ? `/dashboard/api/admin/regions/${encodeURIComponent(target.region)}`
    : `/dashboard/api/admin/upstreams/${encodeURIComponent(target.upstream)}`;
  try {
    const result = await api(path, { method: "PATCH", body: changesOf(target) });
    dialog.close("ok");
    pending = null;
    toast(result.changed === false
      ? `Nothing to change: ${result.audit.what} is already ${result.audit.after}` +
        (heldByRegion(result.audit) ? "; its region is drained: undrain the region" : "") +
        ` (config v${result.version})`
      : `Applied as ${result.audit.who}: ${result.audit.what} ${result.audit.before} → ` +
        `${result.audit.after} (config v${result.version})`);
  } catch (err) {
    $("confirm-error").textContent = err.message;
  }
});

// A no-op's audit of a drain kept by its region (own_drain false, drained true): the region's
// undrain is what brings it back, as ctl says.
function heldByRegion(audit) {
  const after = JSON.parse(audit.after);
  return after.own_drain === false && after.drained === true;
}
