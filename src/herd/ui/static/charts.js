// herd ui: small SVG line charts with hover read-out (no library: the UI works offline).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3a6ea5", "#d35400", "#2e7d32", "#8e44ad", "#c0392b", "#16a085"];

function svgEl(tag, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
  return (+v.toPrecision(5)).toString();
}

// series: [{name, points: [[x, y], ...], color?}]; returns a <div class="chart"> holding the SVG.
function lineChart(series, opts = {}) {
  const W = opts.width || 520, H = opts.height || 230, m = {l: 62, r: 14, t: 24, b: 36};
  const wrap = document.createElement("div");
  wrap.className = "chart";
  if (opts.id) wrap.id = opts.id;
  const svg = svgEl("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                            "aria-label": opts.title || "chart"}, null);
  wrap.appendChild(svg);
  const tip = document.createElement("div");
  tip.className = "tip";
  wrap.appendChild(tip);
  const pts = series.flatMap(s => s.points).filter(p => Number.isFinite(p[1]));
  if (opts.title) svgEl("text", {x: m.l, y: 15, "font-size": 12, "font-weight": 600}, svg).textContent = opts.title;
  if (!pts.length) {
    svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667085"}, svg).textContent = "no data";
    return wrap;
  }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.05 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const X = x => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = y => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
  for (let i = 0; i <= 4; i++) {  // grid and axis labels
    const yv = y0 + (y1 - y0) * i / 4, yp = Y(yv);
    svgEl("line", {x1: m.l, x2: W - m.r, y1: yp, y2: yp, stroke: "#eceff3"}, svg);
    svgEl("text", {x: m.l - 6, y: yp + 4, "text-anchor": "end", "font-size": 10, fill: "#667085"}, svg)
      .textContent = fmtNum(yv);
    const xv = x0 + (x1 - x0) * i / 4;
    svgEl("text", {x: X(xv), y: H - m.b + 14, "text-anchor": "middle", "font-size": 10, fill: "#667085"}, svg)
      .textContent = fmtNum(xv);
  }
  svgEl("text", {x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11, fill: "#667085"}, svg)
    .textContent = opts.xlabel || "step";
  if (opts.ylabel) {
    const cy = (m.t + H - m.b) / 2;
    svgEl("text", {x: 11, y: cy, transform: `rotate(-90 11 ${cy})`, "text-anchor": "middle", "font-size": 11,
                   fill: "#667085"}, svg).textContent = opts.ylabel;
  }
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const good = s.points.filter(p => Number.isFinite(p[1]));
    svgEl("polyline", {points: good.map(p => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: color,
                       "stroke-width": 1.8, "data-series": s.name}, svg);
    if (good.length < 40) good.forEach(p => svgEl("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color}, svg));
    if (series.length > 1) {
      svgEl("rect", {x: W - m.r - 120, y: m.t + i * 15 - 8, width: 10, height: 3, fill: color}, svg);
      svgEl("text", {x: W - m.r - 106, y: m.t + i * 15 - 4, "font-size": 10}, svg).textContent = s.name;
    }
  });
  const cursor = svgEl("line", {y1: m.t, y2: H - m.b, stroke: "#99a3b3", "stroke-dasharray": "3 3",
                                visibility: "hidden"}, svg);
  const hit = svgEl("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "transparent",
                             class: "hit"}, svg);
  hit.addEventListener("mousemove", ev => {
    const r = svg.getBoundingClientRect();
    const xv = x0 + (ev.clientX - r.left - m.l) / (W - m.l - m.r) * (x1 - x0);
    const rows = [];
    let at = null;
    series.forEach(s => {
      let best = null;
      for (const p of s.points) if (best === null || Math.abs(p[0] - xv) < Math.abs(best[0] - xv)) best = p;
      if (best) { at = best[0]; rows.push(`${s.name}: ${fmtNum(best[1])}`); }
    });
    if (at === null) return;
    cursor.setAttribute("x1", X(at)); cursor.setAttribute("x2", X(at));
    cursor.setAttribute("visibility", "visible");
    tip.textContent = `${opts.xlabel || "step"} ${fmtNum(at)} · ${rows.join(" · ")}`;
    tip.style.display = "block";
    tip.style.left = `${Math.min(X(at) + 8, W - 180)}px`;
    tip.style.top = `${m.t}px`;
  });
  hit.addEventListener("mouseleave", () => { tip.style.display = "none"; cursor.setAttribute("visibility", "hidden"); });
  return wrap;
}
