// The world map: Natural Earth 1:110m countries (vendor/countries-110m.json) in an
// equirectangular projection drawn as SVG, the regions as dots coloured by health, and the
// places clients come from sized by requests/s, with a line to each region that served them.
import { s } from "./util.js";

const W = 1000;
const LAT_TOP = 84;     // crops the polar wastes: nobody sends requests from there
const LAT_BOTTOM = -58;
const H = (W * (LAT_TOP - LAT_BOTTOM)) / 360;  // 394.4: the viewBox's height
const ANTARCTICA = "010";

const x = (lon) => ((lon + 180) / 360) * W;
const y = (lat) => ((LAT_TOP - lat) / (LAT_TOP - LAT_BOTTOM)) * H;

// One ring as path data. Longitudes are unwrapped so a ring across the antimeridian (Russia,
// Fiji) stays one shape; the part beyond ±180° is drawn again shifted by 360° and the viewBox
// clips both.
function ringPath(ring) {
  let prev = null;
  const pts = ring.map(([lon, lat]) => {
    if (prev !== null) {
      while (lon - prev > 180) lon -= 360;
      while (prev - lon > 180) lon += 360;
    }
    prev = lon;
    return [lon, lat];
  });
  const draw = (shift) =>
    pts.map(([lon, lat], i) => `${i ? "L" : "M"}${x(lon + shift).toFixed(1)},${y(lat).toFixed(1)}`)
      .join("") + "Z";
  let d = draw(0);
  const lons = pts.map((p) => p[0]);
  if (Math.min(...lons) < -180) d += draw(360);
  if (Math.max(...lons) > 180) d += draw(-360);
  return d;
}

function geometryPath(geom) {
  if (!geom) return "";
  const polys = geom.type === "Polygon" ? [geom.coordinates] : geom.coordinates;
  return polys.map((poly) => poly.map(ringPath).join("")).join("");
}

export class WorldMap {
  constructor(svg) {
    this.svg = svg;
    this.land = s("g");
    this.flows = s("g");
    this.places = s("g");
    this.regions = s("g");
    svg.append(this.land, this.flows, this.places, this.regions);
  }

  async load() {
    const resp = await fetch("/dashboard/static/vendor/countries-110m.json");
    const world = await resp.json();
    const countries = window.topojson.feature(world, world.objects.countries).features;
    for (const f of countries) {
      if (f.id === ANTARCTICA) continue;
      this.land.append(s("path", { class: "land", d: geometryPath(f.geometry) },
        s("title", {}, f.properties.name)));
    }
  }

  render(state) {
    const where = new Map(state.regions.map((r) => [r.id, r]));
    this.regions.replaceChildren(...state.regions.map((r) => {
      const cx = x(r.longitude), cy = y(r.latitude);
      return s("g", { "data-region": r.id, "data-state": r.state },
        s("circle", { class: `region ${r.state}`, cx, cy, r: 7 + Math.min(8, Math.sqrt(r.rps)) },
          s("title", {}, `${r.id} (${r.name}): ${r.state}, ${r.rps} req/s`)),
        s("text", { class: "region-label", x: cx + 11, y: cy + 4 }, r.id));
    }));
    const flows = [], dots = [];
    for (const p of state.places) {
      const px = x(p.longitude), py = y(p.latitude);
      for (const [rid, rps] of Object.entries(p.to)) {
        const r = where.get(rid);
        if (!r) continue;
        const rx = x(r.longitude), ry = y(r.latitude);
        // A gentle arc: the control point sits above the chord's middle.
        const mx = (px + rx) / 2, my = (py + ry) / 2 - Math.hypot(rx - px, ry - py) * 0.2;
        flows.push(s("path", {
          class: "flow", d: `M${px},${py} Q${mx},${my} ${rx},${ry}`,
          "stroke-width": Math.min(6, 0.8 + Math.sqrt(rps)),
        }));
      }
      const label = [p.city, p.country].filter(Boolean).join(", ") || "unknown place";
      // Not served ("-": refused, failed everywhere, or the client left): red, and said.
      const refused = p.to["-"] ?? 0;
      dots.push(s("circle", {
        class: refused > 0 ? "place refused" : "place",
        cx: px, cy: py, r: Math.min(14, 2.5 + 2 * Math.sqrt(p.rps)),
        "data-place": label,
      }, s("title", {}, `${label}: ${p.rps} req/s` + (refused > 0 ? `, ${refused} not served` : ""))));
    }
    this.flows.replaceChildren(...flows);
    this.places.replaceChildren(...dots);
  }
}
