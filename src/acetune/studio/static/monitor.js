// Training monitor: live curves from the run folder's metrics.jsonl, checkpoints, validation renders side by side, export.
"use strict";
const monitor = { dir: null, offset: 0, points: [], timer: null, validation: [] };

function seriesFor(names) {
  const out = {};
  for (const p of monitor.points) for (const n of names) {
    const key = Object.keys(p).find(k => k === n);
    if (key !== undefined && typeof p[key] === "number") (out[n] = out[n] || []).push([p.step, p[key]]);
  }
  return out;
}

function drawAll() {
  drawCurves($("#curve-loss"), seriesFor(["train/loss", "val/loss"]));
  drawCurves($("#curve-lr"), seriesFor(["train/lr", "train/learning_rate"]));
  const valNames = [...new Set(monitor.points.flatMap(p => Object.keys(p).filter(k => k.startsWith("val/") && k !== "val/loss")))];
  drawCurves($("#curve-val"), seriesFor(valNames.length ? valNames : ["val/loss"]),
    "no validation metrics (val/...) in metrics.jsonl yet");
}

function renderList(target, step) {
  const items = monitor.validation.filter(v => String(v.step) === String(step));
  target.replaceChildren(...items.map(v => el("div", { class: "render" },
    el("div", {}, el("b", {}, `step ${v.step} · #${v.index}`), " ", el("span", { class: "muted" }, v.prompt)),
    v.png_url ? el("img", { src: v.png_url, alt: "mel spectrogram" }) : null,
    v.wav_url ? el("audio", { controls: true, preload: "metadata", src: v.wav_url, class: "val-audio" }) : el("span", { class: "muted" }, "outside the served folders"))));
}

function fillSelect(select, options, keep) {
  const old = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (keep && options.some(o => String(o[0]) === old)) select.value = old;
}

async function pollMonitor() {
  if (!monitor.dir) return;
  let data;
  try { data = await api("GET", `/api/monitor?dir=${encodeURIComponent(monitor.dir)}&offset=${monitor.offset}`); }
  catch (e) { $("#monitor-status").textContent = e.message; return; }
  if (data.reset) monitor.points = [];
  monitor.points.push(...data.points); monitor.offset = data.offset;
  const last = monitor.points[monitor.points.length - 1];
  $("#monitor-status").textContent = `${monitor.points.length} logged step(s)` + (last ? ` · last step ${last.step}` : "");
  drawAll();
  const ckpt = $("#ckpt-select");  // follows the newest checkpoint unless the user picked an older one
  const newest = !ckpt.options.length || ckpt.selectedIndex === ckpt.options.length - 1;
  fillSelect(ckpt, data.checkpoints.map(c => [c.path, `step ${c.step}`]), !newest);
  if (newest && data.checkpoints.length) ckpt.value = data.checkpoints[data.checkpoints.length - 1].path;
  const steps = [...new Set(data.validation.map(v => v.step))];
  const changed = JSON.stringify(data.validation) !== JSON.stringify(monitor.validation);
  monitor.validation = data.validation;
  if (changed) {
    const opts = steps.map(s => [s, `step ${s}`]);
    const a = $("#cmp-a"), b = $("#cmp-b"), fresh = !a.options.length;
    fillSelect(a, opts, true); fillSelect(b, opts, true);
    if (fresh && steps.length) { a.value = steps[0]; b.value = steps[steps.length - 1]; }
    renderList($("#cmp-a-list"), a.value); renderList($("#cmp-b-list"), b.value);
  }
}

async function loadMonitor() {
  const runs = await api("GET", "/api/runs");
  const dirs = [...new Set(runs.filter(r => r.stage === "train" && r.output_dir).map(r => r.output_dir))];
  if (studio.state.monitorDir && !dirs.includes(studio.state.monitorDir)) dirs.unshift(studio.state.monitorDir);
  fillSelect($("#monitor-run"), dirs.map(d => [d, d]), true);
  if (studio.state.monitorDir) $("#monitor-run").value = studio.state.monitorDir;
  selectRun($("#monitor-run").value || null);
  clearInterval(monitor.timer);
  monitor.timer = setInterval(() => { if (!location.hash.startsWith("#monitor")) return clearInterval(monitor.timer); pollMonitor(); }, 1000);
}

function selectRun(dir) {
  if (dir !== monitor.dir) { monitor.dir = dir; monitor.offset = 0; monitor.points = []; monitor.validation = []; $("#cmp-a").replaceChildren(); $("#cmp-b").replaceChildren(); }
  studio.state.monitorDir = dir;
  if (!dir) { $("#monitor-status").textContent = "no training run yet: start one on the Stages tab"; drawAll(); return; }
  pollMonitor();
}

studio.tabs.monitor = () => loadMonitor();
window.addEventListener("DOMContentLoaded", () => {
  $("#monitor-run").addEventListener("change", e => selectRun(e.target.value));
  $("#cmp-a").addEventListener("change", e => renderList($("#cmp-a-list"), e.target.value));
  $("#cmp-b").addEventListener("change", e => renderList($("#cmp-b-list"), e.target.value));
  $("#export-btn").addEventListener("click", async () => {
    try { const run = await api("POST", "/api/export", { checkpoint: $("#ckpt-select").value });
      $("#export-status").textContent = `export started (${run.id}): ${run.command}`; }
    catch (e) { $("#export-status").textContent = e.message; }
  });
});
