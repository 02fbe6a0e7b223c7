// The song page: player + waveform, editable caption/lyrics/BPM/key/language, save (conflict-checked) and undo.
"use strict";
const songPage = { id: null, song: null };
const SONG_FIELDS = ["caption", "lyrics", "bpm", "keyscale", "language"];

function fillSong(s) {
  songPage.song = s; songPage.id = s.id;
  $("#song-empty").hidden = true; $("#song-view").hidden = false;
  $("#song-title").textContent = s.id;
  const audio = $("#song-audio");
  if (audio.dataset.src !== s.audio_url) { audio.src = s.audio_url; audio.dataset.src = s.audio_url; }
  const wave = $("#song-wave");
  wave.hidden = !s.waveform_url;
  if (s.waveform_url) wave.src = s.waveform_url;
  const m = s.measured || {};
  $("#song-facts").replaceChildren(
    el("span", {}, `length ${duration(s.duration)}`), el("span", {}, `${s.sample_rate || "?"} Hz, ${s.channels || "?"} ch`),
    el("span", {}, `loudness ${m.lufs !== undefined && m.lufs !== null ? m.lufs + " LUFS" : "…"}`),
    el("span", {}, `peak ${m.peak ?? "…"}`),
    el("span", { title: "measured from the audio" }, `measured: ${fmt(m.bpm, 0) || "?"} BPM, ${m.keyscale || "?"}`));
  $("#song-problems").replaceChildren(...s.problems.map(p => el("li", {}, p)));
  for (const f of SONG_FIELDS) $("#f-" + f).value = s[f] === null || s[f] === undefined ? "" : s[f];
  $("#song-undo").disabled = !s.can_undo;
  const src = Object.entries(s.sources || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
  $("#song-sources").textContent = src ? "read from " + src : "no sidecar files yet: saving creates them in the folder's convention";
}

async function loadSong(id) {
  if (!id) { if (!songPage.id) return; id = songPage.id; }
  try { fillSong(await api("GET", "/api/song?id=" + encodeURIComponent(id))); $("#song-status").textContent = ""; }
  catch (e) { $("#song-status").textContent = e.message; }
}

async function saveSong() {
  const body = { version: songPage.song.version };
  for (const f of SONG_FIELDS) body[f] = $("#f-" + f).value;
  const status = $("#song-status");
  try {
    const res = await api("PUT", "/api/song?id=" + encodeURIComponent(songPage.id), body);
    fillSong(res.song);
    status.textContent = res.written.length ? "saved: " + res.written.join(", ") : "nothing changed";
  } catch (e) {
    status.textContent = (e.status === 409 ? "Conflict: " : "Not saved: ") + e.message;
  }
}

async function undoSong() {
  try {
    const res = await api("POST", "/api/song/undo?id=" + encodeURIComponent(songPage.id));
    fillSong(res.song); $("#song-status").textContent = "undone: the previous text is back on disk";
  } catch (e) { $("#song-status").textContent = e.message; }
}

function neighbour(delta) {
  const ids = table.rows.map(r => r.id), i = ids.indexOf(songPage.id);
  if (i >= 0 && ids[i + delta]) location.hash = "#song/" + encodeURIComponent(ids[i + delta]);
}

studio.tabs.song = id => loadSong(id);
window.addEventListener("DOMContentLoaded", () => {
  $("#song-save").addEventListener("click", saveSong);
  $("#song-undo").addEventListener("click", undoSong);
  $("#song-prev").addEventListener("click", () => neighbour(-1));
  $("#song-next").addEventListener("click", () => neighbour(1));
});
