// Line charts drawn as inline SVG (a few dozen lines instead of a charting library): x = step, y = value.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f62d0", "#d0582f", "#2b9a5a", "#8a3fd0", "#c79a00"];

function svg(tag, attrs) { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
function niceNumber(v) { return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : +v.toPrecision(3); }

// series: {name: [[step, value], ...]}; draws every series with its own color and a legend.
function drawCurves(node, series, empty) {
  const W = 480, H = 220, L = 52, R = 10, T = 10, B = 28;
  node.replaceChildren();
  const all = Object.values(series).flat().filter(p => Number.isFinite(p[1]));
  node.dataset.points = String((Object.values(series)[0] || []).length);  // the first (main) series
  if (!all.length) { const t = svg("text", { x: 20, y: H / 2 }); t.textContent = empty || "no points yet"; node.append(t); return; }
  let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
  let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  node.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#dde1ea" }));
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + (y1 - y0) * i / 4, y = sy(yv);
    node.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#eef0f5" }));
    const t = svg("text", { x: 4, y: y + 3 }); t.textContent = niceNumber(yv); node.append(t);
    const xv = x0 + (x1 - x0) * i / 4, tx = svg("text", { x: sx(xv) - 8, y: H - 10 });
    tx.textContent = Number.isInteger(xv) || x1 - x0 >= 8 ? Math.round(xv) : xv.toFixed(1); node.append(tx);
  }
  Object.entries(series).forEach(([name, pts], i) => {
    const good = pts.filter(p => Number.isFinite(p[1]));
    if (!good.length) return;
    const color = COLORS[i % COLORS.length];
    node.append(svg("polyline", { points: good.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
    if (good.length < 60) good.forEach(p => node.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2, fill: color })));
    const legend = svg("text", { x: L + 8, y: T + 12 + 12 * i, fill: color }); legend.textContent = name; legend.style.fill = color; node.append(legend);
  });
}
