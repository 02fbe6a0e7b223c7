// Stage forms (fields come from the stage's own Args via /api/stages/<stage>/form), the exact command, runs and logs.
"use strict";
const stages = { stage: "build-dataset", fields: [], logRun: null, logOffset: 0, timer: null };

function fieldInput(f, value) {
  const id = "arg-" + f.name;
  let input;
  if (f.kind === "bool") input = el("input", { type: "checkbox", id, name: f.name, checked: !!value });
  else if (f.choices) input = el("select", { id, name: f.name }, f.choices.map(c => el("option", { value: c, selected: String(c) === String(value) }, c)));
  else if (f.kind === "list") input = el("textarea", { id, name: f.name, rows: 2, placeholder: "one value per line" });
  else input = el("input", { type: "text", id, name: f.name, placeholder: f.required ? "required" : "" });
  if (f.kind === "list") input.value = (value || []).join("\n");
  else if (f.kind !== "bool" && !f.choices) input.value = value === null || value === undefined ? "" : value;
  input.addEventListener("input", updateCommand); input.addEventListener("change", updateCommand);
  const label = el("label", { for: id }, el("b", {}, "--" + f.name), f.required ? " *" : "");
  return el("div", { class: "field", "data-name": f.name }, f.kind === "bool" ? el("label", {}, input, " ", el("b", {}, "--" + f.name)) : label,
    f.kind === "bool" ? null : input, el("div", { class: "help" }, f.help));
}

function formValues() {
  const values = {};
  for (const f of stages.fields) {
    const input = $("#arg-" + f.name);
    if (!input) continue;
    values[f.name] = f.kind === "bool" ? input.checked : input.value;
  }
  if (stages.stage === "caption" && studio.state.captionIds) {  // preview: the first folder's run
    const folderOf = id => id.includes("/") ? id.slice(0, id.lastIndexOf("/")) : "";
    const ids = studio.state.captionIds, first = folderOf(ids[0]);
    values.data_dir = studio.info.data_dir + (first ? "/" + first : "");
    values.files = ids.filter(id => folderOf(id) === first).map(id => id.split("/").pop()).join("\n");
  }
  return values;
}

async function loadForm(stage) {
  stages.stage = stage;
  $$("#stage-buttons button").forEach(b => b.classList.toggle("primary", b.dataset.stage === stage));
  const form = await api("GET", `/api/stages/${stage}/form`);
  stages.fields = form.fields;
  const saved = JSON.parse(localStorage.getItem("acetune-form-" + stage) || "{}");
  const nodes = form.fields.map(f => fieldInput(f, f.name in saved ? saved[f.name] : (f.name in form.suggested ? form.suggested[f.name] : f.default)));
  if (stage === "caption" && studio.state.captionIds)
    nodes.unshift(el("p", { class: "ok" }, `Captioning the ${studio.state.captionIds.length} song(s) selected in the table (--data_dir and --files are set from the selection).`));
  $("#stage-form").replaceChildren(...nodes);
  updateCommand();
}

let commandTimer = null;
function updateCommand() {
  clearTimeout(commandTimer);
  commandTimer = setTimeout(async () => {
    try {
      const res = await api("POST", `/api/stages/${stages.stage}/command`, { values: formValues() });
      $("#stage-command").textContent = res.command; $("#stage-error").textContent = ""; $("#stage-run").disabled = false;
    } catch (e) {
      $("#stage-command").textContent = e.data && e.data.command || ""; $("#stage-error").textContent = e.message;
    }
  }, 150);
}

async function startRun() {
  const values = formValues();
  localStorage.setItem("acetune-form-" + stages.stage, JSON.stringify(values));
  try {
    let run;
    if (stages.stage === "caption" && studio.state.captionIds) {
      run = (await api("POST", "/api/caption", { ids: studio.state.captionIds, values })).runs[0];
    } else run = await api("POST", `/api/stages/${stages.stage}/run`, { values });
    $("#stage-error").textContent = ""; showLog(run.id); refreshRuns();
  } catch (e) { $("#stage-error").textContent = e.message; }
}

async function refreshRuns() {
  const runs = await api("GET", "/api/runs");
  studio.state.runs = runs;
  $("#runs tbody").replaceChildren(...runs.map(r => el("tr", { "data-run": r.id, "data-status": r.status },
    el("td", {}, el("a", { href: "#", onclick: e => { e.preventDefault(); showLog(r.id); } }, r.id)),
    el("td", { class: r.status === "failed" ? "bad" : (r.status === "finished" ? "ok" : "") }, r.status + (r.returncode !== null ? ` (${r.returncode})` : "")),
    el("td", { class: "muted" }, (r.progress || "").slice(0, 80)),
    el("td", {},
      r.status === "running" || r.status === "stopping" ? el("button", { class: "stop", onclick: () => act(r.id, "stop") }, r.status === "stopping" ? "Abort" : "Stop") : null,
      r.status === "stopped" || r.status === "failed" ? el("button", { class: "resume", onclick: () => act(r.id, "resume") }, "Resume") : null,
      r.stage === "train" && r.output_dir ? el("button", { onclick: () => { studio.state.monitorDir = r.output_dir; location.hash = "#monitor"; } }, "Monitor") : null))));
}

async function act(id, action) {
  try { const run = await api("POST", `/api/runs/${id}/${action}`); if (action === "resume") showLog(run.id); }
  catch (e) { $("#stage-error").textContent = e.message; }
  refreshRuns();
}

function showLog(id) { stages.logRun = id; stages.logOffset = 0; $("#run-log").textContent = ""; $("#log-run").textContent = id; pollLog(); }

async function pollLog() {
  if (!stages.logRun) return;
  const res = await api("GET", `/api/runs/${stages.logRun}/log?offset=${stages.logOffset}`);
  if (res.text) { const log = $("#run-log"); log.textContent += res.text; log.scrollTop = log.scrollHeight; }
  stages.logOffset = res.offset;
  $("#run-progress").textContent = res.run.progress || "";
}

studio.tabs.stages = stage => {
  if (stage || !stages.fields.length) loadForm(stage || stages.stage);
  refreshRuns();
  clearInterval(stages.timer);
  stages.timer = setInterval(() => { if (!location.hash.startsWith("#stages")) return clearInterval(stages.timer); refreshRuns(); pollLog(); }, 1000);
};
window.addEventListener("DOMContentLoaded", async () => {
  const info = await api("GET", "/api/info");
  $("#stage-buttons").replaceChildren(...info.stages.map(s => el("button", { "data-stage": s, onclick: () => {
    if (s !== "caption") studio.state.captionIds = null; location.hash = "#stages/" + s; } }, s)));
  $("#stage-run").addEventListener("click", startRun);
});
