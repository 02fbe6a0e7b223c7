// Shared helpers: the JSON API (with the header every write needs), tiny DOM builders, tab routing.
"use strict";
const studio = { tabs: {}, state: {} };

async function api(method, url, body) {
  const opts = { method, headers: { "X-Acetune": "1" } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(url, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  if (!res.ok) { const err = new Error(data && data.error || res.statusText); err.status = res.status; err.data = data; throw err; }
  return data;
}

function $(sel, root) { return (root || document).querySelector(sel); }
function $$(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
function fmt(v, digits) { return v === null || v === undefined ? "" : (typeof v === "number" ? v.toFixed(digits ?? 0) : v); }
function duration(s) { if (s === null || s === undefined) return ""; const m = Math.floor(s / 60); return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`; }

function showTab() {
  const [name, ...rest] = (location.hash.slice(1) || "songs").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  $$(".tab").forEach(t => t.classList.toggle("active", t.id === "tab-" + name));
  $$("nav a").forEach(a => a.classList.toggle("active", a.dataset.tab === name));
  const tab = studio.tabs[name];
  if (tab) tab(arg);
}

window.addEventListener("hashchange", showTab);
window.addEventListener("DOMContentLoaded", async () => {
  const info = await api("GET", "/api/info");
  studio.info = info;
  $("#folders").textContent = `songs: ${info.data_dir || "(none: start with --data_dir)"} · work: ${info.workdir}`;
  showTab();
});
