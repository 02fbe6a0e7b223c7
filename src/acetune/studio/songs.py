"""The songs table: every song of the data folder with its sidecars, header facts, analysis and problems.

Scanning reuses build-dataset's own folder walk and sidecar reader (`scan_folder`), so the table
shows exactly what `acetune build-dataset` would build, with its report's problems attached to the
song they concern. Header facts (duration, rate, channels) are read at scan time; the measured
BPM, key, loudness, peak and the waveform image come from a background thread (decoding 1,000
songs takes minutes) and are cached in the work folder by file size and mtime.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from acetune.dataset.sidecar_reader import Sidecars, find_sidecars, read_bpm_csv
from acetune.dataset.sidecars import INSTRUMENTAL
from acetune.dataset.song import normalize_bpm, split_tags
from acetune.report import Report
from acetune.studio.files import atomic_write, relative_to_root

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIP_FRACTION = 1e-3  # more than 0.1% clipped samples is reported
SORTABLE = ("name", "duration", "sample_rate", "channels", "bpm", "keyscale", "lufs", "language", "caption",
            "lyrics_status", "problem_count")
FILTERS = ("all", "problems", "no_caption", "no_lyrics", "instrumental", "with_lyrics")


@dataclass
class SongRow:
    id: str  # path relative to the data folder (POSIX), also the audio URL
    name: str
    folder: str
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    bpm: float | None = None  # from the sidecars (what training uses)
    keyscale: str | None = None
    language: str | None = None
    caption: str = ""
    tags: list[str] = field(default_factory=list)
    lyrics: str = ""
    lyrics_status: str = "missing"  # lyrics | instrumental | missing
    sources: dict[str, str] = field(default_factory=dict)  # role -> sidecar file name
    problems: list[str] = field(default_factory=list)  # from the sidecars (reread after each edit)
    audio_problems: list[str] = field(default_factory=list)  # from the header and the folder scan
    measured: dict = field(default_factory=dict)  # bpm, keyscale, lufs, peak, clipped (background)

    @property
    def problem_count(self) -> int:
        return len(self.problems) + len(self.audio_problems) + len(self.measured.get("problems", []))

    @property
    def lufs(self) -> float | None:
        return self.measured.get("lufs")

    def to_json(self, full: bool = False) -> dict:
        d = asdict(self)
        d["problem_count"] = self.problem_count
        d["problems"] = self.problems + d.pop("audio_problems") + self.measured.get("problems", [])
        if not full:
            d.pop("lyrics")
        return d


def row_from_sidecars(rel: str, path: Path, found: Sidecars) -> SongRow:
    lyrics = found.lyrics or ""
    status = "missing" if not lyrics else ("instrumental" if lyrics.strip().lower() == INSTRUMENTAL else "lyrics")
    return SongRow(id=rel, name=path.name, folder=str(Path(rel).parent.as_posix()),
                   bpm=normalize_bpm(found.meta.get("bpm")), keyscale=found.meta.get("keyscale"),
                   language=found.meta.get("language"), caption=found.caption or "",
                   tags=split_tags(found.caption or ""), lyrics=lyrics, lyrics_status=status,
                   sources={k: Path(v).name for k, v in found.sources.items()},
                   problems=[e.reason for e in found.errors] + list(found.conflicts))


class SongIndex:
    """All songs under `data_dir`, queried by the table; `refresh(id)` rereads one song's sidecars."""

    def __init__(self, data_dir: Path, workdir: Path):
        self.data_dir, self.workdir = data_dir, workdir
        self.cache_path = workdir / ".studio" / "analysis.json"
        self.wave_dir = workdir / ".studio" / "waveforms"
        self.rows: dict[str, SongRow] = {}
        self.lock = threading.Lock()
        self._analysis: dict[str, dict] = {}
        self._worker: threading.Thread | None = None
        self.analysed = 0
        self.scanning = False

    # ---- scanning ----------------------------------------------------------------------------

    def scan(self) -> None:
        from acetune.audio.io import audio_info
        from acetune.stages.build_dataset import scan_folder

        report = Report("studio")
        found = scan_folder(self.data_dir, True, self.workdir.resolve(), report)
        by_file: dict[str, list[str]] = defaultdict(list)
        for p in report.problems:
            by_file[os.path.normpath(p.file)].append(p.reason)
        rows = {}
        for path, sidecars in found:
            rel = relative_to_root(self.data_dir, path) or path.name
            row = row_from_sidecars(rel, path, sidecars)
            try:
                info = audio_info(path)
                row.duration, row.sample_rate, row.channels = info.duration, info.sample_rate, info.channels
                if info.truncated:
                    row.audio_problems.append("truncated: the file ends before its header says")
            except Exception as e:  # noqa: BLE001 - any header failure is the user's file, shown in the table
                row.audio_problems.append(f"unreadable audio ({getattr(e, 'reason', e)})")
            row.audio_problems += [r for r in by_file.get(os.path.normpath(path), []) if r not in row.problems]
            rows[rel] = row
        with self.lock:
            self.rows = rows
        self._load_cache()
        self.start_analysis()

    def scan_in_background(self) -> None:
        self.scanning = True

        def work():
            try:
                self.scan()
            finally:
                self.scanning = False

        threading.Thread(target=work, name="studio-scan", daemon=True).start()

    def refresh(self, song_id: str) -> SongRow:
        """Reread one song's sidecars after an edit (keeps header facts and measurements)."""
        old = self.rows[song_id]
        path = self.data_dir / song_id
        names = set(os.listdir(path.parent))
        csvs = {}
        for n in names:
            if n.lower().endswith(".csv"):
                try:
                    csvs[str(path.parent / n)] = read_bpm_csv(path.parent / n)
                except Exception:  # noqa: BLE001 - reported by a full scan; here only the song's own files matter
                    pass
        new = row_from_sidecars(song_id, path, find_sidecars(path, names, csvs))
        new.duration, new.sample_rate, new.channels = old.duration, old.sample_rate, old.channels
        new.measured, new.audio_problems = old.measured, old.audio_problems
        with self.lock:
            self.rows[song_id] = new
        return new

    # ---- the table query --------------------------------------------------------------------

    def query(self, q: str = "", sort: str = "name", desc: bool = False, filter: str = "all",
              page: int = 1, per_page: int = 50) -> dict:
        with self.lock:
            rows = list(self.rows.values())
        q = q.strip().lower()
        if q:
            rows = [r for r in rows if q in r.id.lower() or q in r.caption.lower() or q in r.lyrics.lower()
                    or q in (r.keyscale or "").lower()
                    or any(q in p.lower() for p in r.problems + r.audio_problems + r.measured.get("problems", []))]
        if filter == "problems":
            rows = [r for r in rows if r.problem_count]
        elif filter == "no_caption":
            rows = [r for r in rows if not r.caption]
        elif filter in ("no_lyrics", "instrumental", "with_lyrics"):
            want = {"no_lyrics": "missing", "instrumental": "instrumental", "with_lyrics": "lyrics"}[filter]
            rows = [r for r in rows if r.lyrics_status == want]
        sort = sort if sort in SORTABLE else "name"

        def key(r: SongRow):
            v = getattr(r, sort)
            if isinstance(v, float) and math.isnan(v):
                v = None
            return (v is None, v.lower() if isinstance(v, str) else (v if v is not None else 0))

        present = sorted((r for r in rows if getattr(r, sort) is not None), key=key, reverse=desc)
        rows = present + [r for r in rows if getattr(r, sort) is None]  # unknowns last either way
        per_page = max(1, min(int(per_page), 500))
        pages = max(1, math.ceil(len(rows) / per_page))
        page = min(max(1, int(page)), pages)
        chunk = rows[(page - 1) * per_page: page * per_page]
        return {"total": len(rows), "page": page, "pages": pages, "per_page": per_page,
                "songs_in_folder": len(self.rows), "analysed": self.analysed, "scanning": self.scanning,
                "rows": [r.to_json() for r in chunk]}

    # ---- background analysis ------------------------------------------------------------------

    def _load_cache(self) -> None:
        try:
            self._analysis = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self._analysis = {}

    def _stamp(self, song_id: str) -> str:
        st = (self.data_dir / song_id).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def start_analysis(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._analyse_all, name="studio-analysis", daemon=True)
        self._worker.start()

    def _analyse_all(self) -> None:
        self.analysed = 0
        for song_id in sorted(self.rows):
            row = self.rows.get(song_id)
            if row is None:
                continue
            try:
                stamp = self._stamp(song_id)
                cached = self._analysis.get(song_id)
                if cached is None or cached.get("stamp") != stamp or not self.waveform_path(song_id).is_file():
                    cached = {"stamp": stamp, **measure(self.data_dir / song_id, self.waveform_path(song_id))}
                    self._analysis[song_id] = cached
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(self.cache_path, json.dumps(self._analysis))
                row.measured = {k: v for k, v in cached.items() if k != "stamp"}
            except Exception as e:  # noqa: BLE001 - an undecodable song is a row problem, not a crash
                row.measured = {"problems": [f"cannot analyse ({getattr(e, 'reason', e)})"]}
            self.analysed += 1

    def waveform_path(self, song_id: str) -> Path:
        import hashlib

        return self.wave_dir / (hashlib.sha1(song_id.encode()).hexdigest()[:20] + ".png")


def measure(path: Path, png: Path) -> dict:
    """Decode once: tempo, key, loudness, peak, clipping, and a waveform PNG at `png`."""
    from acetune.audio.analysis import analyze
    from acetune.audio.io import decode
    from acetune.audio.resample import resample

    wav, sr = decode(path)  # (C, T) float32 at the file's rate
    a = analyze(resample(wav.mean(dim=0, keepdim=True), sr, 16000)[0], 16000, loudness_wav=wav, loudness_rate=sr)
    x = wav.numpy()
    peak = float(np.abs(x).max()) if x.size else 0.0
    clipped = float((np.abs(x) >= CLIP_LEVEL).mean()) if x.size else 0.0
    problems = []
    if not math.isfinite(a.lufs):
        problems.append("silent (no measurable loudness)")
    if clipped > CLIP_FRACTION:
        problems.append(f"clipped: {100 * clipped:.2f}% of samples at full scale")
    png.parent.mkdir(parents=True, exist_ok=True)
    write_waveform_png(x, png)
    return {"bpm": None if a.bpm is None else round(a.bpm, 1), "keyscale": a.keyscale,
            "key_confidence": round(a.key_confidence, 3),
            "lufs": round(a.lufs, 1) if math.isfinite(a.lufs) else None,
            "peak": round(peak, 4), "clipped": clipped, "problems": problems}


def write_waveform_png(x: np.ndarray, path: Path, width: int = 900, height: int = 120) -> None:
    """Min/max envelope per pixel column (the usual DAW waveform), mono mix, drawn with numpy + PIL."""
    from PIL import Image

    mono = x.mean(axis=0) if x.ndim == 2 else x
    img = np.full((height, width, 3), (247, 248, 250), dtype=np.uint8)
    img[height // 2, :] = (200, 205, 215)
    if mono.size:
        cols = np.array_split(mono, width)
        lo = np.array([c.min() if c.size else 0.0 for c in cols])
        hi = np.array([c.max() if c.size else 0.0 for c in cols])
        mid = (height - 1) / 2
        top = np.clip(np.round(mid - hi * mid), 0, height - 1).astype(int)
        bottom = np.clip(np.round(mid - lo * mid), 0, height - 1).astype(int)
        for i in range(width):
            img[top[i]:bottom[i] + 1, i] = (55, 110, 200)
        clipped = np.maximum(np.abs(lo), np.abs(hi)) >= CLIP_LEVEL
        img[:4, clipped] = (220, 50, 50)  # red ticks above clipped columns
    Image.fromarray(img).save(path)
