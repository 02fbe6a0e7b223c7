"""Saving a song's edits into its sidecar files, in the folder's own convention, with undo and conflict checks.

Where each value goes (the names come from `acetune.dataset.sidecars.SIDECAR_NAMES`):
- caption / lyrics: back into the file they were read from (so the precedence build-dataset applies
  is unchanged); a value stored in the ACE-Step 1.5 `stem.json` is updated there. A song without one
  gets a new file named in the convention of its other sidecar, else the one most of its folder's
  sidecars use (the fork's `_prompt.txt`/`_lyrics.txt` when the folder has none).
- bpm / keyscale / language: the song's `stem.json`, merged (the only convention with these fields;
  `acetune caption` writes them there too, for every convention). An emptied field is removed.

Every write goes through the work folder's `Journal` (previous text kept, undo restores it) and is
refused with `EditConflict` when any of the song's sidecars changed on disk since the page loaded.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from acetune.dataset.sidecars import INSTRUMENTAL, SIDECAR_NAMES, sidecar_name
from acetune.dataset.song import normalize_bpm, split_tags
from acetune.studio.files import Journal, file_version, read_or_none

META_FIELDS = ("bpm", "keyscale", "language")
_SUFFIX_CONVENTION = (("_prompt.txt", "fork"), ("_lyrics.txt", "fork"), (".caption.txt", "acestep15"),
                      (".lyrics.txt", "acestep15"), (".lyrics", "simpletuner"))


class EditConflict(Exception):
    """The song's sidecars changed on disk after the editor loaded them."""


class EditRefused(Exception):
    """A value that cannot be saved (e.g. a BPM that is not a number)."""


def sidecar_paths(audio: Path) -> list[Path]:
    """Every sidecar file the song could have, in any convention (for versions and conflicts)."""
    names = {sidecar_name(conv, role, audio.stem) for conv, roles in SIDECAR_NAMES.items() for role in roles}
    return sorted(audio.parent / n for n in names)


def song_version(audio: Path) -> str:
    return file_version(sidecar_paths(audio))


def folder_convention(folder: Path) -> str:
    """The sidecar convention most files in `folder` use ("fork" when none is found)."""
    votes: Counter[str] = Counter()
    for name in os.listdir(folder):
        for suffix, conv in _SUFFIX_CONVENTION:
            if name.endswith(suffix):
                votes[conv] += 1
                break
    return votes.most_common(1)[0][0] if votes else "fork"


def song_convention(audio: Path, sources: dict[str, str]) -> str:
    """The convention of the song's own sidecars (caption first), else its folder's."""
    for role in ("caption", "lyrics"):
        name = sources.get(role)
        if not name:
            continue
        if name == f"{audio.stem}.txt":  # SimpleTuner's caption, or ACE-Step 1.5 lyrics beside a .caption.txt
            return "simpletuner" if role == "caption" else "acestep15"
        if name == f"{audio.stem}.json":
            return "acestep15"
        for suffix, conv in _SUFFIX_CONVENTION:
            if name.endswith(suffix):
                return conv
    return folder_convention(audio.parent)


def _meta_path(audio: Path) -> Path:
    return audio.parent / sidecar_name("acestep15", "meta", audio.stem)


def _read_meta(audio: Path) -> dict:
    text = read_or_none(_meta_path(audio))
    try:
        data = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError:
        raise EditRefused(f"{_meta_path(audio).name} is not valid JSON; fix or delete it first") from None
    if not isinstance(data, dict):
        raise EditRefused(f"{_meta_path(audio).name} is not a JSON object; fix or delete it first")
    return data


def plan_changes(audio: Path, sources: dict[str, str], current: dict, new: dict) -> dict[Path, str | None]:
    """Files to write for the fields of `new` that differ from `current` (path -> text, None = delete).

    `sources` maps "caption"/"lyrics" to the file name each value was read from (SongRow.sources).
    """
    changes: dict[Path, str | None] = {}
    meta = _read_meta(audio)
    meta_before = dict(meta)
    meta_name = _meta_path(audio).name
    conv = None
    for field, role in (("caption", "prompt"), ("lyrics", "lyrics")):
        if field not in new or (new[field] or "").strip() == (current.get(field) or "").strip():
            continue
        text = (new[field] or "").replace("\r\n", "\n").strip()
        src = sources.get(field)
        if src == meta_name:
            if text:
                meta[field] = text
            else:
                meta.pop(field, None)
            continue
        if src is None:
            conv = conv or song_convention(audio, sources)
            src = sidecar_name(conv, role, audio.stem)
        changes[audio.parent / src] = text or None  # one line, no final newline: as `acetune caption` writes
    for field in META_FIELDS:
        if field not in new:
            continue
        value = new[field]
        value = value.strip() if isinstance(value, str) else value
        if value in (None, ""):
            meta.pop(field, None)
            continue
        if field == "bpm":
            bpm = normalize_bpm(value)
            if bpm is None:
                raise EditRefused(f"BPM must be a positive number, got {value!r}")
            value = int(bpm) if float(bpm).is_integer() else round(bpm, 2)
        if str(meta.get(field)) != str(value):
            meta[field] = value
    if meta != meta_before:
        changes[_meta_path(audio)] = json.dumps(meta, ensure_ascii=False, indent=2) if meta else None
    return changes


def save_song(journal: Journal, song_id: str, audio: Path, sources: dict[str, str], current: dict,
              new: dict, version: str | None) -> list[str]:
    """Apply an edit from the song page; returns the file names written. EditConflict if stale."""
    if version is not None and version != song_version(audio):
        raise EditConflict("the song's sidecar files changed on disk since this page loaded; "
                           "reload to see them (your text is still in the form)")
    changes = plan_changes(audio, sources, current, new)
    if changes:
        journal.write(song_id, changes)
    return sorted(p.name for p in changes)


def retag(caption: str, op: str, tag: str, new_tag: str = "") -> str:
    """Add, remove or rename one tag in a comma-separated caption (case-insensitive match)."""
    tags = split_tags(caption)
    low = tag.strip().lower()
    if op == "add":
        if low and low not in (t.lower() for t in tags):
            tags.append(tag.strip())
    elif op == "remove":
        tags = [t for t in tags if t.lower() != low]
    elif op == "rename":
        out = []
        for t in tags:
            t = new_tag.strip() if t.lower() == low else t
            if t and t.lower() not in (o.lower() for o in out):
                out.append(t)
        tags = out
    else:
        raise EditRefused(f"unknown tag operation {op!r} (add, remove or rename)")
    return ", ".join(tags)


def bulk_edit(journal: Journal, rows: list, data_dir: Path, op: str, tag: str = "", new_tag: str = "") -> int:
    """Apply a tag operation or "instrumental" to many songs (one undo entry per song); returns songs changed."""
    changed = 0
    for row in rows:
        audio = data_dir / row.id
        current = {"caption": row.caption, "lyrics": row.lyrics}
        if op == "instrumental":
            new = {"lyrics": INSTRUMENTAL}
        else:
            new = {"caption": retag(row.caption, op, tag, new_tag)}
        changes = plan_changes(audio, row.sources, current, new)
        if changes:
            journal.write(row.id, changes)
            changed += 1
    return changed
