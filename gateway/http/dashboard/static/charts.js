// The charts: uPlot (vendor/) for requests/s, TTFT p99 and failures by region over the last
// five minutes; tiny SVG sparklines per upstream.
import { s } from "./util.js";

const PALETTE = ["#4dabf7", "#f59f00", "#cc5de8", "#2fb344", "#ff8787", "#20c997", "#fab005",
  "#845ef7"];
// Index of each value in a history point's per-region array (sampler.point).
export const REGION = { rps: 0, failed: 1, ttftP50: 2, ttftP99: 3 };
export const UPSTREAM = { rps: 0, errPct: 1, ttftP50: 2, inFlight: 3, rtt: 4, queue: 5 };

export class RegionChart {
  constructor(el, index) {
    this.el = el;
    this.index = index;
    this.plot = null;
    this.regions = [];
  }

  render(points, regions) {
    const ids = regions.map((r) => r.id);
    if (!this.plot || ids.join() !== this.regions.join()) this.build(ids);
    const xs = points.map((p) => p.t);
    const series = ids.map((rid) => points.map((p) => p.r[rid]?.[this.index] ?? null));
    this.plot.setData([xs, ...series]);
  }

  build(ids) {
    this.plot?.destroy();
    this.regions = ids;
    const width = Math.max(240, this.el.clientWidth || 300);
    this.plot = new window.uPlot({
      width, height: 150,
      legend: { show: true, live: false },  // the names; values are in the tables
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [
        { stroke: "#8b96a3", grid: { stroke: "#2a313a" }, ticks: { stroke: "#2a313a" } },
        { stroke: "#8b96a3", grid: { stroke: "#2a313a" }, ticks: { stroke: "#2a313a" }, size: 44 },
      ],
      series: [{}, ...ids.map((rid, i) => ({
        label: rid, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false,
      }))],
    }, [[], ...ids.map(() => [])], this.el);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(240, this.el.clientWidth), height: 150 });
  }
}

// A sparkline of one upstream value over the history: a polyline scaled to its own maximum.
export function sparkline(points, uid, index, cls = "") {
  const values = points.map((p) => p.u[uid]?.[index] ?? null);
  const max = Math.max(1e-9, ...values.filter((v) => v !== null));
  const n = Math.max(1, values.length - 1);
  const pts = [];
  values.forEach((v, i) => {
    if (v !== null) pts.push(`${((i / n) * 90).toFixed(1)},${(21 - (v / max) * 20).toFixed(1)}`);
  });
  const last = values.length ? values[values.length - 1] : null;
  return s("svg", { class: `spark ${cls}`, viewBox: "0 0 90 22", preserveAspectRatio: "none" },
    s("polyline", { points: pts.join(" ") }),
    s("title", {}, `max ${max.toFixed(1)}, now ${last === null ? "–" : last}`));
}
