"""The preprocessed output folder: finished parts, resume index, atomic writes, merging outputs.

Layout and columns are `acetune.dataset.schema`'s. This module only decides which part folders exist:

- A part is written to `parts/.tmp-<tag>-<pid>-<n>/` and renamed to `parts/part-<tag>-<n>/` when
  complete, so a killed run leaves either a whole part or a temp folder the next run deletes.
  `<tag>` names the shard (`s002of004`), so shards can write into one folder at the same time.
- A part is rewritten (to drop rows of a song whose source file changed) by renaming it to
  `parts/.old-<name>/`, writing the new part, then deleting the old one; a run that finds an
  `.old-` folder without its part puts it back.
- Merging copies parts of other outputs in, dropping songs the destination already has.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from acetune.dataset import schema
from acetune.errors import UsageError
from acetune.preprocessing.samples import song_key_of

logger = logging.getLogger(__name__)

# Settings that may differ between runs (and shards) writing into one output.
RUN_ONLY_SETTINGS = ("num_shards", "shard_index", "device", "compute_dtype", "part_size", "num_workers",
                     "ssl_batch_size", "model_sources")


def shard_tag(num_shards: int, index: int) -> str:
    return f"s{index:03d}of{num_shards:03d}"


def parts_root(out: Path) -> Path:
    return Path(out) / schema.PARTS_DIR


@dataclass
class SongEntry:
    """What the output already holds for one song key."""

    source_size: int
    source_mtime_ns: int
    parts: set[str] = field(default_factory=set)
    rows: int = 0


def recover(out: Path, tag: str | None) -> None:
    """Delete this shard's temp parts (a killed run) and restore any part whose rewrite was cut off."""
    root = parts_root(out)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if tag is not None and p.name.startswith(f".tmp-{tag}-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".old-"):
            original = root / p.name[len(".old-"):]
            if original.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, original)


def index_rows(out: Path) -> dict[str, SongEntry]:
    """song key -> SongEntry over every finished part (reads four small columns only)."""
    from datasets import load_from_disk

    done: dict[str, SongEntry] = {}
    for part in schema.part_dirs(out):
        ds = load_from_disk(str(part)).select_columns(
            [schema.KEY, schema.WINDOW, schema.SOURCE_SIZE, schema.SOURCE_MTIME_NS])
        cols = ds.to_dict()
        for key, win, size, mtime in zip(cols[schema.KEY], cols[schema.WINDOW], cols[schema.SOURCE_SIZE],
                                         cols[schema.SOURCE_MTIME_NS]):
            entry = done.setdefault(song_key_of(key, win), SongEntry(size, mtime))
            entry.parts.add(part.name)
            entry.rows += 1
        del ds
    return done


def _next_index(root: Path, tag: str) -> int:
    prefix = f"part-{tag}-"
    taken = [int(p.name[len(prefix):]) for p in root.glob(prefix + "*") if p.name[len(prefix):].isdigit()]
    return max(taken, default=-1) + 1


def write_part(out: Path, tag: str, rows: list[dict], ssl_names: tuple[str, ...]) -> Path:
    """Write `rows` (dicts with every column of `schema.features(ssl_names)`) as a new finished part."""
    from datasets import Dataset

    root = parts_root(out)
    root.mkdir(parents=True, exist_ok=True)
    n = _next_index(root, tag)
    tmp = root / f".tmp-{tag}-{os.getpid()}-{n:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    ds = Dataset.from_list(rows, features=schema.features(ssl_names))
    final = root / f"part-{tag}-{n:05d}"
    try:  # disk full / Ctrl-C mid-write: no half part stays behind
        ds.save_to_disk(str(tmp))
        del ds
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def drop_songs(part: Path, song_keys: set[str]) -> int:
    """Rewrite `part` without the rows of `song_keys`; returns rows dropped (the part goes if empty)."""
    from datasets import load_from_disk

    ds = load_from_disk(str(part))
    keep = [i for i, (k, w) in enumerate(zip(ds[schema.KEY], ds[schema.WINDOW])) if song_key_of(k, w) not in song_keys]
    dropped = len(ds) - len(keep)
    if dropped == 0:
        return 0
    old = part.with_name(f".old-{part.name}")
    tmp = part.with_name(f".tmp-rewrite-{os.getpid()}-{part.name}")
    if keep:
        ds.select(keep).flatten_indices().save_to_disk(str(tmp))
    del ds
    os.replace(part, old)
    if keep:
        os.replace(tmp, part)
    shutil.rmtree(old, ignore_errors=True)
    return dropped


def output_bytes(out: Path) -> int:
    """Bytes of every finished part on disk."""
    return sum(f.stat().st_size for p in schema.part_dirs(out) for f in p.rglob("*") if f.is_file())


def comparable(meta: schema.DatasetMeta) -> dict:
    """The parts of a DatasetMeta that must agree for rows to share one output."""
    settings = {k: v for k, v in meta.settings.items() if k not in RUN_ONLY_SETTINGS}
    return {"family": meta.family, "checkpoint_hash": meta.checkpoint_hash, "storage_dtype": meta.storage_dtype,
            "ssl_names": sorted(meta.ssl_names), "prompt_variants": meta.prompt_variants,
            "schema_version": meta.schema_version, **settings,
            "checkpoint": {k: v for k, v in meta.checkpoint.items() if k != "name"}}  # a renamed folder may resume


def check_compatible(old: schema.DatasetMeta, new: schema.DatasetMeta, where: Path, fix: str,
                     labels: tuple[str, str] = ("there", "now")) -> None:
    """UsageError naming the differing settings, if rows made under `old` and `new` cannot mix.
    `labels` say where the old and the new value come from."""
    a, b = comparable(old), comparable(new)
    if not old.checkpoint or not new.checkpoint:  # made before outputs recorded the checkpoint: the hash decides
        a.pop("checkpoint"), b.pop("checkpoint")
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} {labels[0]}, {b.get(k)!r} {labels[1]}" for k in diff[:4])
        raise UsageError(f"made with other settings ({shown})", path=where, fix=fix)


def merge_outputs(sources: list[Path], out: Path) -> tuple[int, int]:
    """Copy the parts of `sources` into `out`, skipping songs `out` already holds.

    Returns (parts added, songs skipped as duplicates). `out` gets the first source's metadata
    if it has none; every source must be compatible with it.
    """
    out = Path(out)
    metas = [schema.DatasetMeta.load(s) for s in sources]
    existing = (out / schema.META_FILE).is_file()
    base, base_name = (schema.DatasetMeta.load(out), out) if existing else (metas[0], Path(sources[0]))
    for src, meta in zip(sources, metas):  # all checked before anything is written: a refusal changes nothing
        check_compatible(meta, base, src, fix="merge only outputs made with the same checkpoint and settings",
                         labels=(f"in {src}", f"in {base_name}"))
    if not existing:
        out.mkdir(parents=True, exist_ok=True)
        base.save(out)
    recover(out, None)
    have = set(index_rows(out))
    root = parts_root(out)
    root.mkdir(parents=True, exist_ok=True)
    added = skipped = 0
    for src in sources:
        if Path(src).resolve() == out.resolve():
            continue
        for part in schema.part_dirs(src):
            keys = set(index_rows_of_part(part))
            dup = keys & have
            skipped += len(dup)
            if dup == keys:
                continue
            name = part.name
            k = 1
            while (root / name).exists():
                name, k = f"{part.name}-m{k}", k + 1
            tmp = root / f".tmp-merge-{os.getpid()}-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(part, tmp)
            os.replace(tmp, root / name)
            if dup:
                drop_songs(root / name, dup)
            have |= keys
            added += 1
    return added, skipped


def index_rows_of_part(part: Path) -> list[str]:
    """Song keys of one part (each once)."""
    from datasets import load_from_disk

    ds = load_from_disk(str(part)).select_columns([schema.KEY, schema.WINDOW])
    cols = ds.to_dict()
    return list(dict.fromkeys(song_key_of(k, w) for k, w in zip(cols[schema.KEY], cols[schema.WINDOW])))
