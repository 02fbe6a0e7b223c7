"""One row of the filename-only dataset (what `build-dataset` writes and `preprocess` reads).

The columns are the upstream ACE-Step / woct0rdho fork columns, so the fork's own
`preprocess_dataset_new.py` can read our output too, plus `duration` and optional metadata:

| column           | type              | meaning                                                       |
|------------------|-------------------|---------------------------------------------------------------|
| keys             | string            | sample id: the audio file's stem (relative path if not unique) |
| filename         | string            | audio file path: absolute as written; a relative one is read relative to the dataset folder |
| tags             | list[string]      | caption tags ("rock, female vocals" -> ["rock", "female vocals"]) |
| norm_lyrics      | string            | lyrics, LRC timestamps removed; "[instrumental]" if none       |
| speaker_emb_path | string            | path to a speaker embedding ("" = none, zeros are used)        |
| recaption        | struct of strings | alternative captions by name (keys = union over rows)          |
| duration         | float32           | seconds, from the audio header                                |
| bpm              | float32 or null   | tempo                                                         |
| keyscale         | string or null    | e.g. "C major"                                                |
| timesignature    | string or null    | e.g. "4"                                                      |
| language         | string or null    | lyrics language code                                          |
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

UPSTREAM_COLUMNS = ("keys", "filename", "tags", "norm_lyrics", "speaker_emb_path", "recaption")
METADATA_COLUMNS = ("bpm", "keyscale", "timesignature", "language")
VALIDATED = ("caption", "tags", "lyrics", *METADATA_COLUMNS)  # the keys `validate_metadata` checks


def features(recaption_keys: Iterable[str] = ()):
    """The `datasets.Features` of the filename-only dataset (recaption struct has these keys)."""
    from datasets import Features, Sequence, Value

    return Features({
        "keys": Value("string"),
        "filename": Value("string"),
        "tags": Sequence(Value("string")),
        "norm_lyrics": Value("string"),
        "speaker_emb_path": Value("string"),
        "recaption": {k: Value("string") for k in sorted(set(recaption_keys))},
        "duration": Value("float32"),
        "bpm": Value("float32"),
        "keyscale": Value("string"),
        "timesignature": Value("string"),
        "language": Value("string"),
    })


def resolve_filename(stored: str, dataset_dir: str | os.PathLike) -> tuple[str, bool]:
    """(the audio path a `filename` cell means, whether it was found only relative to the working folder).

    build-dataset writes absolute paths. A relative path (hand-made or older datasets) is relative to
    the dataset folder, so every stage finds the same file from any working folder; a path found only
    relative to the working folder (what older versions meant) is still used, flagged for a warning.
    """
    path = Path(stored)
    if path.is_absolute():
        return stored, False
    beside = Path(os.path.abspath(Path(dataset_dir) / path))
    if not beside.exists() and path.exists():
        return os.path.abspath(path), True
    return str(beside), False


def split_tags(text: str) -> list[str]:
    """"rock, female vocals,," -> ["rock", "female vocals"] (empty entries dropped)."""
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def normalize_bpm(value) -> float | None:
    """A tempo as float, or None for missing / unparsable / non-positive values ("120 bpm" ok)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().lower().removesuffix("bpm").strip()
        if not value:
            return None
    try:
        bpm = float(value)
    except (TypeError, ValueError):
        return None
    return bpm if math.isfinite(bpm) and bpm > 0 else None


BPM_RANGE = (30.0, 300.0)  # tempos a song's metadata can sensibly state (ACE-Step's own range)
_KEY_RE = re.compile(r"^[A-Ga-g][#b\u266f\u266d]? ?(major|minor|maj|min|m|ionian|dorian|phrygian|lydian|mixolydian|"
                     r"aeolian|locrian)?$", re.IGNORECASE)
_TIME_SIGNATURE_RE = re.compile(r"^([1-9]|1[0-6])(/(1|2|4|8|16|32))?$")


def _text_or_list(value, joiner: str | None):
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        kept = [v.strip() for v in value if v.strip()]
        return (kept if joiner is None else joiner.join(kept)), None
    return None, f"must be a string or a list of strings, not {_describe(value)}"


def _describe(value) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def validate_metadata(values: dict) -> tuple[dict, list[str]]:
    """Check a sidecar's / row's caption, lyrics and metadata by type and range.

    Returns (the valid values, one reason per invalid one). Invalid values are left out, never coerced
    ("fast" is not a tempo, 7 is not a key, a list is not turned into "['a', 'b']"). Accepted:
    caption/tags/lyrics a string or a list of strings (caption and lyrics joined with ", " / newlines); bpm a number or
    numeric string ("120 bpm" too) within BPM_RANGE; keyscale a key such as "A minor", "F# major",
    "Bb", "Am", "D dorian"; timesignature "4", 3 or "6/8"; language a string.
    """
    good, bad = {}, []
    for name, joiner in (("caption", ", "), ("tags", None), ("lyrics", "\n")):
        if values.get(name) is not None:
            text, why = _text_or_list(values[name], joiner)
            if why:
                bad.append(f"{name} {why}")
            else:
                good[name] = text
    if values.get("bpm") is not None:
        bpm = normalize_bpm(values["bpm"])
        if bpm is None:
            bad.append(f"bpm must be a number of beats per minute, not {_describe(values['bpm'])}")
        elif not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
            bad.append(f"bpm {bpm:g} is outside {BPM_RANGE[0]:g}-{BPM_RANGE[1]:g}")
        else:
            good["bpm"] = bpm
    for name, pattern, example in (("keyscale", _KEY_RE, '"A minor" or "F# major"'),
                                   ("timesignature", _TIME_SIGNATURE_RE, '"4" or "6/8"')):
        value = values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if name == "keyscale" and not isinstance(value, str):
            text = None  # 7 is not a key
        if text is None or not pattern.match(text):
            bad.append(f"{name} must be like {example}, not {_describe(value)}")
        else:
            good[name] = text
    language = values.get("language")
    if language is not None:
        if isinstance(language, str):
            if language.strip():
                good["language"] = language.strip()
        else:
            bad.append(f"language must be a string such as \"en\", not {_describe(language)}")
    return good, bad


def normalize_text(value) -> str | None:
    """Strip a metadata string; None for missing or empty (numbers become strings: 4 -> "4")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


@dataclass
class SongRecord:
    """One song: audio path, caption tags, lyrics, duration and optional metadata."""

    keys: str
    filename: str
    tags: list[str] = field(default_factory=list)
    norm_lyrics: str = ""
    speaker_emb_path: str = ""
    recaption: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    bpm: float | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str | None = None

    @property
    def has_caption(self) -> bool:
        return bool(self.tags) or any(v for v in self.recaption.values())

    @classmethod
    def from_dict(cls, row: dict) -> SongRecord:
        """From a dataset row or JSON object (upstream rows lack the metadata columns)."""
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = split_tags(tags)
        recaption = {k: v for k, v in (row.get("recaption") or {}).items() if isinstance(v, str) and v}
        return cls(
            keys=str(row.get("keys") or ""),
            filename=str(row.get("filename") or ""),
            tags=[str(t).strip() for t in tags if str(t).strip()],
            norm_lyrics=str(row.get("norm_lyrics") or ""),
            speaker_emb_path=str(row.get("speaker_emb_path") or ""),
            recaption=recaption,
            duration=float(row.get("duration") or 0.0),
            bpm=normalize_bpm(row.get("bpm")),
            keyscale=normalize_text(row.get("keyscale")),
            timesignature=normalize_text(row.get("timesignature")),
            language=normalize_text(row.get("language")),
        )

    def to_dict(self, recaption_keys: Iterable[str] | None = None) -> dict:
        """A row for `features(recaption_keys)`: missing recaption keys become None."""
        d = dataclasses.asdict(self)
        if recaption_keys is not None:
            d["recaption"] = {k: self.recaption.get(k) for k in sorted(set(recaption_keys))}
        return d


def to_dataset(records: list[SongRecord]):
    """A `datasets.Dataset` of the records with the schema above."""
    from datasets import Dataset

    keys = sorted({k for r in records for k in r.recaption})
    feats = features(keys)
    return Dataset.from_list([r.to_dict(keys) for r in records], features=feats)
