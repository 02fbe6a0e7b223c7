"""Scan a folder of songs and their sidecar files into the filename-only dataset.

Pairs every audio file (.wav .flac .aiff .ogg .opus .mp3 .m4a .aac .wma .alac, recursively) with
its caption, lyrics and metadata files in any of the conventions users come from (woct0rdho fork
`song_prompt.txt`/`song_lyrics.txt`, SimpleTuner `song.txt`/`song.lyrics`, ACE-Step 1.5
`song.caption.txt`/`song.lyrics.txt`/`song.json`, Key-BPM-Finder `*.csv`), or re-checks an existing
Hugging Face dataset folder or JSON list with the upstream columns. Writes a `datasets` folder
(save_to_disk) with the columns keys, filename, tags, norm_lyrics, speaker_emb_path, recaption,
duration, bpm, keyscale, timesignature, language. Every unusable file is listed at the end
(file, reason, what to do); the exit code is non-zero only with --strict.
See docs/build-dataset.md for the precedence rules.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from acetune.audio.io import AUDIO_EXTENSIONS, audio_info, decode, get_audio_rules
from acetune.cli import arg
from acetune.dataset.sidecar_reader import (
    SidecarError,
    Sidecars,
    clean_lyrics,
    find_sidecars,
    lyrics_or_instrumental,
    read_bpm_csv,
    read_text,
)
from acetune.dataset.song import (
    VALIDATED,
    SongRecord,
    normalize_bpm,
    normalize_text,
    resolve_filename,
    split_tags,
    to_dataset,
    validate_metadata,
)
from acetune.errors import InputError, UsageError
from acetune.progress import progress, progress_disabled
from acetune.report import Report

EXAMPLES = """examples:
  acetune build-dataset --data_dir ./songs --output_name ./songs_filenames
  python convert2hf_dataset_new.py --data_dir ./songs --output_name ./songs_filenames --repeat_count 10
  acetune build-dataset --data_dir old_dataset.json --output_name ./songs_filenames --strict
  acetune build-dataset --hf_dataset Yi3852/ACEStep-Songs --split train --output_name ./songs_filenames
  acetune build-dataset --hf_dataset ./my_songs.parquet --caption_column tags --lyrics_column norm_lyrics \
      --output_name ./songs_filenames
"""

# When two files share a stem in one folder they share sidecars; keep the best-quality one.
_PREFERENCE = (".wav", ".flac", ".aiff", ".aif", ".alac", ".m4a", ".mp3", ".ogg", ".opus", ".aac", ".wma", ".mp4")
_UNSUPPORTED_AUDIO = (".ape", ".wv", ".mka", ".webm", ".caf", ".aifc", ".dsf", ".dff", ".mid", ".midi", ".m4b")
_SIDECAR_SUFFIXES = ("_prompt.txt", "_lyrics.txt", ".lyrics", ".caption.txt", ".lyrics.txt")
# header lengths that are not sample-exact, so no truncation check
_INEXACT_LENGTH = (".aac", ".wma")
FIX_AUDIO = "check that it plays; re-export it as .wav or .flac, or remove it"


@dataclass
class Args:
    output_name: Path = arg(help="output folder for the dataset (replaced if it is a previous dataset)",
                            aliases=("--output", "--output_dir"))
    data_dir: Path | None = arg(None, help="folder of audio files and sidecars (scanned recursively), or an existing "
                                     "dataset folder (save_to_disk) / .json / .jsonl list with the upstream columns",
                                aliases=("--input",))
    hf_dataset: str = arg("", help="instead of --data_dir: a Hub dataset id (owner/name[@revision]) or a local "
                                   "Parquet / Arrow / audiofolder / save_to_disk dataset with an audio column")
    split: str = arg("train", help="--hf_dataset split to read")
    audio_column: str = arg("audio", help="--hf_dataset column with the audio (Audio bytes/path, bytes or a path)")
    caption_column: list[str] = arg(default_factory=lambda: ["prompt", "tags"],
                                    help="--hf_dataset column(s) joined into the caption (SimpleTuner's default)")
    lyrics_column: str = arg("lyrics", help="--hf_dataset column with the lyrics (norm_lyrics is used if absent)")
    revision: str = arg("", help="Hub branch, tag or commit of --hf_dataset (default: main)")
    offline: bool = arg(False, help="use only the HF cache for --hf_dataset (also: HF_HUB_OFFLINE=1)")
    repeat_count: int = arg(1, help="write every song this many times (as the fork: the whole list repeated)")
    default_tag: str = arg("", help="comma-separated tags for songs without any caption file")
    recursive: bool = arg(True, help="scan sub-folders too (the fork always does)")
    check_audio: bool = arg(True, help="decode every file to find corrupt, truncated and silent audio; "
                                       "--no-check_audio reads headers only (faster, finds less)")
    strict: bool = arg(False, help="exit with code 1 if any problem was reported")
    report: Path | None = arg(None, help="also write the problem report as JSON to this file")

    def __post_init__(self):
        self.output_name = Path(self.output_name)
        if bool(self.hf_dataset) == (self.data_dir not in (None, "")):
            raise UsageError("pass exactly one of --data_dir and --hf_dataset", fix="see `acetune build-dataset --help`")
        self.data_dir = Path(self.data_dir or self.hf_dataset)
        self.report = None if self.report in (None, "") else Path(self.report)
        if self.repeat_count < 1:
            raise UsageError(f"--repeat_count must be at least 1, got {self.repeat_count}")
        if not self.hf_dataset and not self.data_dir.exists():
            raise UsageError("--data_dir does not exist", path=self.data_dir, fix="pass your songs folder")
        if self.data_dir.is_file() and self.data_dir.suffix.lower() in AUDIO_EXTENSIONS:
            raise UsageError("--data_dir is an audio file, not a folder of songs", path=self.data_dir,
                             fix="pass the folder that holds it (or a .json/.jsonl list of rows)")
        if self.output_name.resolve() == self.data_dir.resolve():
            raise UsageError("--output_name must differ from --data_dir", path=self.output_name,
                             fix="pass a new folder, e.g. <songs>_filenames")


# ---- scanning a folder ------------------------------------------------------------------------

def _walk(root: Path, recursive: bool, skip: Path, report: Report):
    """Yield (folder, sorted file names), skipping hidden entries and the output folder."""
    for folder, dirs, files in os.walk(root):
        folder_p = Path(folder)
        hidden = [d for d in dirs if d.startswith(".")] + [f for f in files if f.startswith(".")]
        if hidden:
            report.count("hidden files/folders skipped", len(hidden))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (folder_p / d).resolve() != skip)
        yield folder_p, sorted(f for f in files if not f.startswith("."))
        if not recursive:
            break


def scan_folder(root: Path, recursive: bool, skip: Path, report: Report) -> list[tuple[Path, Sidecars]]:
    """[(audio path, Sidecars)] for every usable audio file; problems go to `report`."""
    songs = []
    for folder, files in _walk(root, recursive, skip, report):
        names = set(files)
        by_stem: dict[str, list[str]] = defaultdict(list)
        for f in files:
            ext = os.path.splitext(f)[1].lower()
            if ext in AUDIO_EXTENSIONS:
                by_stem[os.path.splitext(f)[0]].append(f)
            elif ext in _UNSUPPORTED_AUDIO:
                report.problem(folder / f, f"{ext} is not a supported audio format", "convert it to .flac or .wav")
        csv_tables = {}
        for f in files:
            if f.lower().endswith(".csv"):
                try:
                    csv_tables[str(folder / f)] = read_bpm_csv(folder / f)
                except SidecarError as e:
                    report.warning(e.path, e.reason, e.fix)
        used: set[str] = set()
        for stem in sorted(by_stem):
            group = sorted(by_stem[stem], key=lambda f: _PREFERENCE.index(os.path.splitext(f)[1].lower()))
            keep = group[0]
            for dup in group[1:]:
                report.problem(folder / dup, f"duplicate stem: {keep} has the same name and sidecars and was used instead",
                               "rename one of them (and its sidecar files) or delete the duplicate")
            found = find_sidecars(folder / keep, names, csv_tables)
            used |= found.used_files
            for e in found.errors:
                report.problem(e.path, e.reason + " (file ignored)", e.fix)
            for e in found.invalid:
                report.problem(e.path, e.reason, e.fix)
            for c in found.conflicts:
                report.warning(folder / keep, c, "delete or fix the file you do not want (see docs/build-dataset.md)")
            songs.append((folder / keep, found))
        for f in files:
            if f not in used and f.endswith(_SIDECAR_SUFFIXES):
                report.warning(folder / f, "sidecar file without a matching audio file",
                               "rename it after its audio file (e.g. song.mp3 -> song_prompt.txt) or delete it")
    return songs


def _records_from_folder(args: Args, report: Report) -> list[SongRecord]:
    songs = scan_folder(args.data_dir, args.recursive, args.output_name.resolve(), report)
    stems = defaultdict(list)
    for path, _ in songs:
        stems[path.stem].append(path)
    records = []
    for path, found in songs:
        key = path.stem
        if len(stems[key]) > 1:  # keys must be unique ids: fall back to the relative path
            key = path.relative_to(args.data_dir).with_suffix("").as_posix()
            report.warning(path, f"another folder has a song named {path.stem!r}; its key is {key!r}",
                           "nothing to do, or rename one of the songs")
        caption = found.caption if found.caption is not None else args.default_tag
        records.append(SongRecord(
            keys=key, filename=str(path), tags=split_tags(caption or ""),
            norm_lyrics=lyrics_or_instrumental(found.lyrics),
            bpm=normalize_bpm(found.meta.get("bpm")), keyscale=normalize_text(found.meta.get("keyscale")),
            timesignature=normalize_text(found.meta.get("timesignature")),
            language=normalize_text(found.meta.get("language"))))
    return records


# ---- an existing dataset or JSON list -----------------------------------------------------------

def _load_rows(src: Path) -> list[dict]:
    if src.is_dir():
        from datasets import load_from_disk

        try:
            return list(load_from_disk(str(src)))
        except Exception as e:  # noqa: BLE001 - any failure here is the user's folder
            raise InputError(f"cannot load dataset folder ({e.__class__.__name__}: {e})", path=src,
                             fix="pass a folder written by save_to_disk, a .json list, or a folder of songs") from None
    try:
        text = read_text(src)
        rows = ([json.loads(line) for line in text.split("\n") if line.strip()] if src.suffix.lower() == ".jsonl"
                else json.loads(text))
    except (SidecarError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read JSON rows ({getattr(e, 'reason', e)})", path=src,
                         fix="pass a JSON list of objects with keys, filename, tags, norm_lyrics") from None
    if not isinstance(rows, list):
        raise InputError(f"JSON input must be a list of objects, not a {type(rows).__name__}", path=src,
                         fix="wrap the rows in [ ... ]")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"element {i} of the JSON list is a {type(row).__name__} ({json.dumps(row)[:40]}), "
                             "not an object", path=src, fix='make every element an object like {"filename": ...}')
    return rows


def _records_from_rows(args: Args, report: Report) -> list[SongRecord]:
    src = args.data_dir
    base = src if src.is_dir() else src.parent
    records, seen = [], {}
    for i, row in enumerate(_load_rows(src)):
        good, reasons = validate_metadata(row)
        for reason in reasons:
            report.problem(f"{src} row {i}", f"{reason}; value ignored", "correct the value in the row or delete it")
        rec = SongRecord.from_dict({**{k: v for k, v in row.items() if k not in VALIDATED}, **good})
        if not rec.filename:
            report.problem(f"{src} row {i}", "row has no filename", "add the audio path to the row")
            continue
        rec.filename = resolve_filename(rec.filename, base)[0]  # relative to the dataset/JSON, as preprocess reads it
        rec.keys = rec.keys or Path(rec.filename).stem
        if not rec.tags and args.default_tag:
            rec.tags = split_tags(args.default_tag)
        rec.norm_lyrics = lyrics_or_instrumental(clean_lyrics(rec.norm_lyrics))
        prev = seen.get(rec.keys)
        if prev is not None and prev == rec.filename:
            report.warning(rec.filename, f"row {i} repeats key {rec.keys!r}; kept once",
                           "use --repeat_count to repeat songs instead of duplicated rows")
            continue
        if prev is not None:
            new_key = f"{rec.keys}#{i}"
            report.warning(rec.filename, f"key {rec.keys!r} is used by another file; renamed to {new_key!r}",
                           "give every row a unique key")
            rec.keys = new_key
        seen[rec.keys] = rec.filename
        records.append(rec)
    return records


def _records_from_hf(args: Args, report: Report) -> list[SongRecord]:
    from acetune.dataset.hf_source import Columns, read_records

    records, source = read_records(args.hf_dataset, split=args.split, audio_dir=_audio_dir(args.output_name),
                                   columns=Columns(args.audio_column, tuple(args.caption_column), args.lyrics_column),
                                   report=report, revision=args.revision or None, offline=args.offline)
    where = f"{source['repo_id']}@{source['commit']}" if "repo_id" in source else source["path"]
    print(f"build-dataset: {len(records)} rows of split {args.split!r} from {where}", file=sys.stderr)
    return records


def _audio_dir(output: Path) -> Path:
    """Where audio stored as bytes in a dataset is written once (beside the output, which is replaced whole)."""
    return output.with_name(f"{output.name}_audio")


# ---- audio checks -------------------------------------------------------------------------------

def probe_duration(path: Path, check: bool, report: Report) -> float | None:
    """Seconds of audio, or None (problem reported) for unreadable / silent files."""
    try:
        info = audio_info(path)
        if not check:
            if info.truncated:
                report.warning(path, "truncated: the file ends before its header says",
                               "re-export or re-download the file to get all of it")
            return info.duration
        wav, sr = decode(path)
    except InputError as e:
        report.problem(path, e.reason, FIX_AUDIO)
        return None
    frames = wav.shape[-1]
    ext = path.suffix.lower()
    if info.truncated or (ext not in _INEXACT_LENGTH and frames < info.frames - max(2, info.frames // 1000)):
        report.warning(path, f"truncated: the file ends early; {frames / sr:.2f} s of audio decode",
                       "the shorter audio is used; re-export or re-download the file to get all of it")
    # Cheap exact-enough test first: with < 90% zero positions the reference silence rule (> 95%)
    # cannot trigger; otherwise run the reference rule itself (resample, pad to 3 s).
    padded = max(frames, 3 * sr)
    zero_frac = 1 - int((wav != 0).any(dim=0).sum()) / padded
    if zero_frac >= 0.9 and get_audio_rules(wav, sr) is None:
        report.problem(path, "audio is silent (over 95% digital zero, or shorter than 0.15 s); left out",
                       "replace it with the real recording or remove it")
        return None
    return frames / sr


# ---- run ----------------------------------------------------------------------------------------

def _is_dataset_input(src: Path) -> bool:
    return src.is_file() or (src / "dataset_info.json").is_file() or (src / "state.json").is_file()


def save_dataset(records: list[SongRecord], repeat_count: int, out: Path) -> int:
    """Write the records (repeated) to `out` via a temporary folder; returns the row count."""
    import datasets

    if progress_disabled():
        datasets.disable_progress_bars()
    ds = to_dataset(records * repeat_count)
    if out.exists() and not out.is_dir():
        raise UsageError("--output_name is an existing file, not a folder", path=out,
                         fix="pass a new folder name or delete the file")
    if out.exists() and not (out / "dataset_info.json").is_file() and any(out.iterdir()):
        raise UsageError("output folder exists and is not a dataset", path=out,
                         fix="pass a new --output_name or delete the folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # the temp folder goes on every exit path (disk full, read-only, Ctrl-C)
        ds.save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(ds)


def run(args: Args) -> int:
    report = Report("build-dataset")
    if args.hf_dataset:
        candidates = _records_from_hf(args, report)
    elif _is_dataset_input(args.data_dir):
        candidates = _records_from_rows(args, report)
    else:
        candidates = _records_from_folder(args, report)
    records = []
    for rec in progress(candidates, desc="checking audio", unit="song"):
        rec.filename = os.path.abspath(rec.filename)  # absolute: every stage finds it from any working folder
        duration = probe_duration(Path(rec.filename), args.check_audio, report)
        if duration is not None:
            rec.duration = duration
            records.append(rec)
    report.set("songs", len(records))
    report.set("total duration (min)", round(sum(r.duration for r in records) / 60, 1))
    report.set("with caption", sum(r.has_caption for r in records))
    report.set("with lyrics", sum(r.norm_lyrics != lyrics_or_instrumental(None) for r in records))
    report.set("with bpm/key metadata", sum(r.bpm is not None or r.keyscale is not None for r in records))
    if not records:
        report.print_summary()
        raise InputError("no usable songs found", path=args.data_dir,
                         fix=f"put audio files ({' '.join(AUDIO_EXTENSIONS)}) in the folder, see the problems above")
    rows = save_dataset(records, args.repeat_count, args.output_name)
    report.set("rows written", rows)
    report.print_summary()
    if args.report is not None:
        report.save(args.report)
    print(f"wrote {rows} rows ({len(records)} songs x {args.repeat_count}) to {args.output_name}")
    sys.stdout.flush()
    return report.exit_code(args.strict)
