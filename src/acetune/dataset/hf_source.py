"""Songs from a Hugging Face dataset: a Hub dataset id, or a local Parquet / Arrow / audiofolder / save_to_disk set.

`acetune build-dataset --hf_dataset NAME` reads the rows here and hands `SongRecord`s to the same
audio checks and writer as a folder of songs. Columns follow SimpleTuner's ACE-Step conventions:
the caption joins the `prompt` and `tags` columns (`--caption_column`, any number), lyrics come from
`lyrics` (`--lyrics_column`; `norm_lyrics` of the upstream converter is used when `lyrics` is absent),
audio from `audio` (`--audio_column`): a `datasets.Audio` struct {bytes, path}, raw bytes, or a path.

The files are read with pyarrow, not `datasets.load_dataset`: datasets 5 needs torchcodec to build an
audio dataset (acetune decodes with soundfile / PyAV), and reading Parquet in batches keeps the
audio out of a second copy in the datasets cache. Audio stored as bytes is written once, unchanged
(no re-encode), to `<output>_audio/<key>.<ext>`: the filename-only dataset, preprocess's resume
(file size + mtime) and its decoders all work on files, and a rerun reuses what is there.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from acetune.audio.io import AUDIO_EXTENSIONS
from acetune.dataset.sidecar_reader import clean_lyrics, lyrics_or_instrumental
from acetune.dataset.song import SongRecord, normalize_bpm, normalize_text, split_tags
from acetune.errors import InputError

DATA_SUFFIXES = (".parquet", ".arrow")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.json")
KEY_COLUMNS = ("keys", "key", "id", "song_id")
OTHER_SPLITS = ("test", "validation", "valid", "dev", "eval")  # names `datasets` infers splits from
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"FORM", ".aiff"))


@dataclass
class Columns:
    audio: str = "audio"
    caption: tuple[str, ...] = ("prompt", "tags")
    lyrics: str = "lyrics"


def split_files(paths: list[str], split: str) -> list[str]:
    """The data files of one split, by the names `datasets` gives them (`train-0000.parquet`, `train/…`,
    `default/train/0000.parquet`); every data file when none is marked with a split and `split` is train.
    Non-data files (audio, metadata, README) are always kept: rows may point at them."""
    data = [p for p in paths if p.endswith(DATA_SUFFIXES)]
    rest = [p for p in paths if not p.endswith(DATA_SUFFIXES)]

    def marks(path: str, name: str) -> bool:
        stems = [Path(part).stem for part in path.split("/")]
        return any(s == name or s.startswith((f"{name}-", f"{name}_")) for s in stems)

    mine = [p for p in data if marks(p, split)]
    if not mine and split == "train" and not any(marks(p, s) for p in data for s in OTHER_SPLITS):
        mine = data
    # audio/metadata in another split's folder (audiofolder `test/...`) is not needed either
    rest = [p for p in rest if p.split("/")[0] == split or p.split("/")[0] not in OTHER_SPLITS + ("train",)]
    return mine + rest


def open_source(spec: str, *, split: str, revision: str | None, offline: bool):
    """(root folder or file, provenance record) for a local path or a Hub dataset id."""
    if os.path.exists(spec):
        return Path(spec), {"path": str(Path(spec).resolve())}
    from acetune import hub

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec.partition("@")[0]):
        raise InputError("dataset not found", path=spec, fix="pass a local Parquet/Arrow/audiofolder path or a Hub "
                                                             "dataset id such as Yi3852/ACEStep-Songs")
    repo_id, _, at = spec.partition("@")
    source = hub.fetch(repo_id, repo_type="dataset", revision=revision or at or None, offline=offline, all_files=True,
                       select=lambda paths: split_files(paths, split), flag="--hf_dataset")
    return source.path, source.record()


def iter_rows(root: Path, split: str) -> Iterator[tuple[dict, Path]]:
    """(row, folder its relative paths start from) for every row of the split."""
    if root.is_file():
        yield from _table_rows(root)
        return
    if (root / "state.json").is_file() or (root / "dataset_info.json").is_file():
        yield from _saved_rows(root)
        return
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    tables = [f for f in split_files(files, split) if f.endswith(DATA_SUFFIXES)]
    if tables:
        for f in tables:
            yield from _table_rows(root / f, base=root)
        return
    folder = root / split if (root / split).is_dir() else root
    yield from _audiofolder_rows(folder)


def _table_rows(path: Path, base: Path | None = None) -> Iterator[tuple[dict, Path]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=32)
        else:
            try:
                batches = iter(pa.ipc.open_stream(path))
            except pa.ArrowInvalid:
                batches = iter(pa.ipc.open_file(path).read_all().to_batches())
        for batch in batches:
            for row in batch.to_pylist():
                yield row, base or path.parent
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read the data file ({err.__class__.__name__}: {str(err)[:150]})", path=path,
                         fix="download it again or pass another dataset") from None


def _saved_rows(root: Path) -> Iterator[tuple[dict, Path]]:
    """A `save_to_disk` folder: its Arrow files, read directly (no Audio decoding)."""
    state = json.loads((root / "state.json").read_text(encoding="utf-8")) if (root / "state.json").is_file() else {}
    names = [f["filename"] for f in state.get("_data_files", [])] or sorted(p.name for p in root.glob("*.arrow"))
    for name in names:
        for row, _ in _table_rows(root / name):
            yield row, root


def _audiofolder_rows(folder: Path) -> Iterator[tuple[dict, Path]]:
    """`audiofolder` layout: audio files plus an optional metadata.jsonl/.csv with a `file_name` column."""
    meta: dict[str, dict] = {}
    for name in METADATA_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        rows = (list(csv.DictReader(text.splitlines())) if name.endswith(".csv") else
                json.loads(text) if name.endswith(".json") else [json.loads(x) for x in text.splitlines() if x.strip()])
        for row in rows:
            if isinstance(row, dict) and row.get("file_name"):
                meta[Path(row["file_name"]).as_posix()] = row
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        rel = audio.relative_to(folder).as_posix()
        yield {**meta.get(rel, {}), "audio": {"bytes": None, "path": str(audio)}}, folder


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def _extension(data: bytes, name: str | None) -> str:
    if name and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
        return Path(name).suffix.lower()
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return ".mp3" if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2") else ".m4a"


def materialise(data: bytes, name: str | None, key: str, audio_dir: Path) -> Path:
    """Write audio bytes once, unchanged, to `audio_dir/<key>.<ext>` (kept when already identical)."""
    out = audio_dir / f"{_SAFE.sub('_', key).strip('._') or 'song'}{_extension(data, name)}"
    if out.is_file() and out.stat().st_size == len(data):
        return out
    audio_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def read_records(spec: str, *, split: str, columns: Columns, audio_dir: Path, report, revision: str | None = None,
                 offline: bool = False) -> tuple[list[SongRecord], dict]:
    """SongRecords of one split of a dataset (bytes written to `audio_dir`), and where the dataset came from."""
    root, provenance = open_source(spec, split=split, revision=revision, offline=offline)
    records: list[SongRecord] = []
    seen: set[str] = set()
    warned: set[str] = set()
    for i, (row, base) in enumerate(iter_rows(root, split)):
        if i == 0:
            if columns.lyrics == "lyrics" and "lyrics" not in row and "norm_lyrics" in row:
                columns = Columns(columns.audio, columns.caption, "norm_lyrics")  # the upstream converter's name
            missing = [c for c in (columns.audio, *columns.caption, columns.lyrics) if c not in row]
            if columns.audio in missing:
                raise InputError(f"no audio column {columns.audio!r} (columns: {', '.join(sorted(row))})", path=spec,
                                 fix="name the audio column with --audio_column")
            for col in [c for c in missing if c not in columns.caption or not set(columns.caption) - set(missing)]:
                report.warning(spec, f"no {col!r} column: songs get no {'lyrics' if col == columns.lyrics else col}",
                               "name the right column with --caption_column / --lyrics_column")
        value = row.get(columns.audio)
        data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (
            (bytes(value), None) if isinstance(value, bytes | bytearray) else (None, value))
        key = next((_text(row[k]) for k in KEY_COLUMNS if _text(row.get(k))), "") or (
            Path(path).stem if path else f"{split}-{i:06d}")
        if key in seen:
            key = f"{key}#{i}"
        seen.add(key)
        if data:
            filename = materialise(data, path, key, audio_dir)
        elif path:
            filename = Path(path) if Path(path).is_absolute() else base / path
            if not filename.is_file():
                report.problem(f"{spec} row {i}", f"audio file {path} not found", "check the dataset's audio paths")
                continue
        else:
            report.problem(f"{spec} row {i}", f"no audio in column {columns.audio!r}", "fill or drop the row")
            continue
        caption = ", ".join(t for t in (_text(row.get(c)) for c in columns.caption) if t)
        if not caption and "no caption" not in warned:
            warned.add("no caption")
            report.warning(spec, f"rows without a caption in {', '.join(columns.caption)}", "pass --caption_column")
        records.append(SongRecord(
            keys=key, filename=str(filename), tags=split_tags(caption),
            norm_lyrics=lyrics_or_instrumental(clean_lyrics(_text(row.get(columns.lyrics)))),
            bpm=normalize_bpm(row.get("bpm")), keyscale=normalize_text(row.get("keyscale")),
            timesignature=normalize_text(row.get("timesignature")), language=normalize_text(row.get("language"))))
    return records, provenance
