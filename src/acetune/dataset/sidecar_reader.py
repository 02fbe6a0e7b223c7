"""Read and merge the sidecar files of one song (file names: `acetune.dataset.sidecars.SIDECAR_NAMES`).

Conventions (stem = audio file name without extension):

| convention        | caption                                   | lyrics                           | metadata                   |
|-------------------|-------------------------------------------|----------------------------------|----------------------------|
| woct0rdho fork    | `stem_prompt.txt` (comma-separated tags)  | `stem_lyrics.txt`                |                            |
| ACE-Step 1.5      | `stem.caption.txt`, `stem.json` "caption" | `stem.lyrics.txt` (or `stem.txt`), `stem.json` "lyrics" | `stem.json` bpm, keyscale, timesignature, language |
| SimpleTuner       | `stem.txt`                                | `stem.lyrics`                    |                            |
| Key-BPM-Finder    |                                           |                                  | any `*.csv` in the folder: File, BPM, Key |

Precedence when several exist (first wins; a differing loser is reported as a warning):
caption: fork > `.caption.txt` > json caption > `.txt` > `--default_tag`;
lyrics: fork > `.lyrics.txt` > `.lyrics` > json lyrics > `.txt` (as lyrics) > "[instrumental]";
bpm / key: json > csv. `stem.txt` is lyrics (ACE-Step 1.5) when the song has an ACE-Step 1.5
caption (`.caption.txt` or json caption) and no `.lyrics.txt`; otherwise it is the caption.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from acetune.dataset.sidecars import INSTRUMENTAL, sidecar_name
from acetune.dataset.song import normalize_bpm, validate_metadata

FIX_ENCODING = "re-save the file as UTF-8 text (any editor: Save As -> UTF-8)"

_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
# LRC: line time tags [mm:ss], [mm:ss.xx], word tags <mm:ss.xx>, and ID tags such as [ar:Artist]
_LRC_TIME = re.compile(r"[\[<]\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?[\]>]")
_LRC_ID = re.compile(r"^\s*\[(?:ar|al|ti|au|by|offset|re|ve|length|tool|#)\s*:[^\]]*\]\s*$", re.IGNORECASE)


class SidecarError(Exception):
    """A sidecar that cannot be used; `reason` and `fix` go into the run report."""

    def __init__(self, path: Path, reason: str, fix: str = FIX_ENCODING):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.fix = path, reason, fix


def read_text(path: str | Path) -> str:
    """Decode a text file: UTF-8 with or without BOM, UTF-16/32 with BOM, BOM-less UTF-16.

    Newlines become "\\n"; surrounding whitespace is stripped. Raises SidecarError otherwise.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SidecarError(path, f"cannot read file ({e.strerror or e})", "check the file's permissions") from None
    text = None
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError:
                raise SidecarError(path, f"starts with a {enc} byte-order mark but is not valid {enc}") from None
            break
    if text is None and b"\x00" in data:  # NUL bytes are valid UTF-8, but text never has them
        text = _utf16_without_bom(data)
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SidecarError(path, "not UTF-8 or UTF-16 text (another encoding, or a binary file)") from None
    if "\x00" in text:
        raise SidecarError(path, "contains NUL characters (a binary file, or UTF-16 without a byte-order mark)")
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").strip()


def _utf16_without_bom(data: bytes) -> str | None:
    """BOM-less UTF-16 text has a zero byte in every other position for Latin text."""
    if len(data) < 2 or len(data) % 2:
        return None
    for enc, zeros in (("utf-16-le", data[1::2]), ("utf-16-be", data[0::2])):
        if zeros.count(0) >= 0.3 * len(zeros):
            try:
                return data.decode(enc)
            except UnicodeDecodeError:
                return None
    return None


def clean_lyrics(text: str) -> str:
    """Strip LRC time tags and LRC ID-tag lines; keep section tags such as [Verse]."""
    lines = []
    for line in text.split("\n"):
        if _LRC_ID.match(line):
            continue
        lines.append(_LRC_TIME.sub("", line).strip() if _LRC_TIME.search(line) else line.rstrip())
    return "\n".join(lines).strip()


def read_json_meta(path: Path) -> dict:
    """An ACE-Step 1.5 `stem.json` as a dict (SidecarError if it is not a JSON object)."""
    try:
        data = json.loads(read_text(path) or "{}")
    except json.JSONDecodeError as e:
        raise SidecarError(path, f"invalid JSON ({e.msg} at line {e.lineno})", "fix the JSON syntax") from None
    if not isinstance(data, dict):
        raise SidecarError(path, "JSON sidecar must be an object with caption/bpm/keyscale/... keys",
                           "write an object such as {\"caption\": \"...\", \"bpm\": 120}")
    return data


def read_bpm_csv(path: Path) -> dict[str, dict]:
    """A Key-BPM-Finder CSV: {file name (and its stem): {"bpm": ..., "keyscale": ...}}.

    Columns are matched case-insensitively ("File", "BPM", "Key"). Raises SidecarError if the
    CSV has no File column or neither BPM nor Key.
    """
    text = read_text(path)
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise SidecarError(path, f"invalid CSV ({e})", "export the CSV again from Key-BPM-Finder") from None
    if not rows:
        return {}
    cols = {c.strip().lower(): c for c in rows[0] if c}
    if "file" not in cols or not ({"bpm", "key"} & set(cols)):
        raise SidecarError(path, "CSV is not a Key-BPM-Finder export (needs File and BPM/Key columns)",
                           "remove it from the folder or rename its columns to File, BPM, Key")
    table: dict[str, dict] = {}
    for row in rows:
        name = (row.get(cols["file"]) or "").strip()
        if not name:
            continue
        entry = {"bpm": row.get(cols["bpm"]) if "bpm" in cols else None,
                 "keyscale": row.get(cols["key"]) if "key" in cols else None}
        base = Path(name.replace("\\", "/")).name
        table[base] = entry
        table.setdefault(Path(base).stem, entry)
    return table


@dataclass
class Sidecars:
    """What was found for one song; `sources` names the file each value came from."""

    caption: str | None = None
    lyrics: str | None = None
    meta: dict = field(default_factory=dict)  # bpm, keyscale, timesignature, language
    sources: dict[str, str] = field(default_factory=dict)  # role -> file
    used_files: set[str] = field(default_factory=set)
    errors: list[SidecarError] = field(default_factory=list)  # undecodable files (skipped)
    invalid: list[SidecarError] = field(default_factory=list)  # values of the wrong type or range (left out)
    conflicts: list[str] = field(default_factory=list)  # human-readable disagreements


def _pick(found: Sidecars, role: str, candidates: list[tuple[str, str | None]]) -> str | None:
    """First non-empty candidate wins; differing later ones are recorded as conflicts."""
    present = [(src, val) for src, val in candidates if val]
    if not present:
        return None
    src, val = present[0]
    found.sources[role] = src
    for other_src, other in present[1:]:
        if " ".join(other.split()).lower() != " ".join(val.split()).lower():
            found.conflicts.append(f"{role} differs between {Path(src).name} (used) and {Path(other_src).name} (ignored)")
    return val


def find_sidecars(audio: Path, names: set[str], csv_tables: dict[str, dict]) -> Sidecars:
    """Read every sidecar of `audio`; `names` are the file names in its folder.

    `csv_tables` maps CSV file -> `read_bpm_csv` table for that folder.
    """
    found = Sidecars()
    folder, stem = audio.parent, audio.stem
    texts: dict[tuple[str, str], tuple[str, str]] = {}  # (convention, role) -> (path, text)
    for conv, role in (("fork", "prompt"), ("fork", "lyrics"), ("acestep15", "prompt"),
                       ("acestep15", "lyrics"), ("simpletuner", "prompt"), ("simpletuner", "lyrics")):
        name = sidecar_name(conv, role, stem)
        if name in names:
            p = folder / name
            found.used_files.add(name)
            try:
                texts[(conv, role)] = (str(p), read_text(p))
            except SidecarError as e:
                found.errors.append(e)
    meta: dict = {}
    json_name = sidecar_name("acestep15", "meta", stem)
    if json_name in names:
        found.used_files.add(json_name)
        try:
            meta = _validated(read_json_meta(folder / json_name), folder / json_name, found)
        except SidecarError as e:
            found.errors.append(e)
    json_path = str(folder / json_name)

    def get(conv, role):
        path, text = texts.get((conv, role), ("", ""))
        return path, text

    json_caption = str(meta.get("caption") or "").strip()
    has15_caption = bool(get("acestep15", "prompt")[1] or json_caption)
    txt_path, txt = get("simpletuner", "prompt")  # `stem.txt`: caption or ACE-Step 1.5 lyrics
    txt_is_lyrics = has15_caption and not get("acestep15", "lyrics")[1]
    found.caption = _pick(found, "caption", [
        get("fork", "prompt"), get("acestep15", "prompt"), (json_path, json_caption),
        ("", "") if txt_is_lyrics else (txt_path, txt)])
    json_lyrics = str(meta.get("lyrics") or "").strip()
    found.lyrics = _pick(found, "lyrics", [
        get("fork", "lyrics"), get("acestep15", "lyrics"), get("simpletuner", "lyrics"),
        (json_path, json_lyrics), (txt_path, txt) if txt_is_lyrics else ("", "")])
    if found.lyrics is not None:
        found.lyrics = clean_lyrics(found.lyrics) or None

    csv_entry, csv_src = None, ""
    for csv_path, table in csv_tables.items():
        entry = table.get(audio.name) or table.get(stem)
        if entry is not None:
            csv_entry, csv_src = _validated(entry, Path(csv_path), found, f" (row {audio.name})"), csv_path
            break
    for key in ("bpm", "keyscale", "timesignature", "language"):
        cands = [(json_path, _as_text(meta.get(key)))]
        if csv_entry is not None and key in csv_entry:
            cands.append((csv_src, _as_text(csv_entry.get(key))))
        if key == "bpm":  # compare tempos as numbers: "120" == "120.0"
            cands = [(src, None if normalize_bpm(v) is None else f"{normalize_bpm(v):g}") for src, v in cands]
        value = _pick(found, key, cands)
        if value is not None:
            found.meta[key] = value
    return found


def _validated(values: dict, path: Path, found: Sidecars, where: str = "") -> dict:
    """`values` with invalid caption/metadata entries left out, each reported in `found.invalid`."""
    good, reasons = validate_metadata(values)
    for reason in reasons:
        found.invalid.append(SidecarError(path, f"{reason}{where}; value ignored",
                                          "correct the value in the file or delete it"))
    return {**{k: v for k, v in values.items() if k not in ("caption", "lyrics", "bpm", "keyscale",
                                                            "timesignature", "language")}, **good}


def _as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


def lyrics_or_instrumental(lyrics: str | None) -> str:
    return lyrics if lyrics else INSTRUMENTAL
