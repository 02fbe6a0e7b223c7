// The songs table: server-side search, filter, sort and pages (1,000 songs stay fast), selection, bulk edits.
"use strict";
const table = { q: "", filter: "all", sort: "name", desc: false, page: 1, per_page: 50, selected: new Set(), rows: [] };

async function loadTable() {
  const p = new URLSearchParams({ q: table.q, filter: table.filter, sort: table.sort, desc: table.desc ? "1" : "0",
    page: table.page, per_page: table.per_page });
  const data = await api("GET", "/api/songs?" + p);
  table.rows = data.rows; table.page = data.page; table.pages = data.pages; table.total = data.total;
  const body = $("#songs-table tbody");
  body.replaceChildren(...data.rows.map(rowElement));
  $("#page-info").textContent = `page ${data.page} of ${data.pages} · ${data.total} song(s)` +
    (data.total !== data.songs_in_folder ? ` of ${data.songs_in_folder}` : "");
  $("#analysis-status").textContent = data.scanning ? "reading the folder…" : data.analysed < data.songs_in_folder ?
    `measuring audio: ${data.analysed}/${data.songs_in_folder}` : `${data.songs_in_folder} songs measured`;
  $$("#songs-table th[data-sort]").forEach(th => {
    th.classList.toggle("sorted", th.dataset.sort === table.sort); th.classList.toggle("desc", table.desc); });
  $("#sel-count").textContent = `${table.selected.size} selected`;
  if (data.scanning || data.analysed < data.songs_in_folder) setTimeout(() => { if (location.hash.startsWith("#songs") || !location.hash) loadTable(); }, 2000);
}

function measuredNote(m, key, digits) {
  return m && m[key] !== undefined && m[key] !== null ? el("div", { class: "measured", title: "measured from the audio" }, "≈ " + fmt(m[key], digits)) : null;
}

function rowElement(r) {
  const m = r.measured || {};
  const lyr = r.lyrics_status === "lyrics" ? el("span", { class: "ok" }, "lyrics") :
    r.lyrics_status === "instrumental" ? el("span", {}, "[instrumental]") : el("span", { class: "muted" }, "none");
  const problems = r.problems.length ? el("span", { class: "bad", title: r.problems.join("\n") }, `${r.problems.length}: ${r.problems[0]}`) : "";
  const box = el("input", { type: "checkbox", class: "sel", checked: table.selected.has(r.id) });
  box.addEventListener("change", () => { box.checked ? table.selected.add(r.id) : table.selected.delete(r.id);
    $("#sel-count").textContent = `${table.selected.size} selected`; });
  return el("tr", { "data-id": r.id },
    el("td", {}, box),
    el("td", {}, el("a", { href: "#song/" + encodeURIComponent(r.id) }, r.id)),
    el("td", {}, duration(r.duration)),
    el("td", {}, r.sample_rate ? `${r.sample_rate / 1000} kHz / ${r.channels}` : ""),
    el("td", { class: "bpm" }, fmt(r.bpm, 0), measuredNote(m, "bpm", 0)),
    el("td", { class: "key" }, r.keyscale || "", measuredNote(m, "keyscale")),
    el("td", {}, fmt(m.lufs, 1)),
    el("td", { class: "caption", title: r.caption }, r.tags.map(t => el("span", { class: "tag" }, t))),
    el("td", {}, lyr), el("td", {}, r.language || ""), el("td", {}, problems));
}

async function bulk(op) {
  const ids = Array.from(table.selected);
  const status = $("#bulk-status");
  if (!ids.length) { status.textContent = "select songs first"; return; }
  try {
    const res = await api("POST", "/api/bulk", { ids, op, tag: $("#bulk-tag").value, new_tag: $("#bulk-new-tag").value });
    status.textContent = `${res.changed} of ${res.selected} song(s) changed (undo per song on its page)`;
  } catch (e) { status.textContent = e.message; }
  loadTable();
}

studio.tabs.songs = () => loadTable();
window.addEventListener("DOMContentLoaded", () => {
  let timer = null;
  $("#search").addEventListener("input", e => { clearTimeout(timer); timer = setTimeout(() => { table.q = e.target.value; table.page = 1; loadTable(); }, 200); });
  $("#filter").addEventListener("change", e => { table.filter = e.target.value; table.page = 1; loadTable(); });
  $("#per-page").addEventListener("change", e => { table.per_page = +e.target.value; table.page = 1; loadTable(); });
  $("#prev-page").addEventListener("click", () => { if (table.page > 1) { table.page--; loadTable(); } });
  $("#next-page").addEventListener("click", () => { if (table.page < table.pages) { table.page++; loadTable(); } });
  $("#rescan").addEventListener("click", async () => { await api("POST", "/api/rescan"); loadTable(); });
  $$("#songs-table th[data-sort]").forEach(th => th.addEventListener("click", () => {
    table.desc = table.sort === th.dataset.sort ? !table.desc : false; table.sort = th.dataset.sort; loadTable(); }));
  $("#sel-all").addEventListener("change", e => { table.rows.forEach(r => e.target.checked ? table.selected.add(r.id) : table.selected.delete(r.id)); loadTable(); });
  $("#bulk-apply").addEventListener("click", () => bulk($("#bulk-op").value));
  $("#bulk-instrumental").addEventListener("click", () => bulk("instrumental"));
  $("#bulk-caption").addEventListener("click", () => {
    if (!table.selected.size) { $("#bulk-status").textContent = "select songs first"; return; }
    studio.state.captionIds = Array.from(table.selected); location.hash = "#stages/caption"; });
});
