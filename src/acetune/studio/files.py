"""Safe file access for the studio: paths from the browser resolve only inside the named roots.

A request names a root ("data" = the songs folder, "work" = the studio's work folder) and a path
relative to it. Refused: absolute paths (POSIX or Windows drive/UNC), any `..` segment, backslashes,
NUL, encoded dots/slashes (`%2e%2e%2f`, checked on the raw URL by the app and again here after one
decoding, which catches double encoding), and anything whose
resolved target (symlinks followed) lies outside the resolved root. The roots themselves are
whatever folders the user named on the command line: any folder is allowed.

Writes go through `atomic_write` (temp file in the same folder, fsync, rename) and `Journal`, which
keeps the previous text of every file it overwrites so an edit can be undone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")
ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)  # encoded ".", "/", "\\", NUL: traversal in disguise


class PathRefused(Exception):
    """A browser-supplied path that must not be served; the message says why (never the real path)."""


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, resolved, or PathRefused if it is not a plain path inside `root`."""
    if not relative or "\x00" in relative:
        raise PathRefused("empty path or NUL byte")
    if "\\" in relative or relative.startswith("/") or _DRIVE.match(relative):
        raise PathRefused("absolute paths and backslashes are not allowed")
    if ENCODED.search(relative):  # the URL was decoded once already: this was double-encoded
        raise PathRefused("percent-encoded path")
    parts = relative.split("/")
    if any(p in ("..", ".") for p in parts):
        raise PathRefused("'..' and '.' segments are not allowed")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise PathRefused("path leaves its root (symlink)")
    return target


def relative_to_root(root: Path, path: Path) -> str | None:
    """`path` as a root-relative POSIX string, or None when it is not inside `root`."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def file_version(paths: list[Path]) -> str:
    """A short fingerprint of the files' contents (absent files count): changes when any changes."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p).encode())
        try:
            h.update(p.read_bytes())
        except FileNotFoundError:
            h.update(b"\x00absent")
    return h.hexdigest()[:16]


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text (\\n line ends) via a temp file in the same folder, fsync and rename."""
    tmp = path.with_name(f".{path.name}.studio-{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


class Journal:
    """Append-only log of edits, one JSON line each: {"song", "time", "files": {path: previous text|null}}.

    `write` records the previous text of each file before replacing it; `undo(song)` restores the
    newest entry of that song (deleting files that did not exist before) and drops it. Lives in the
    work folder, so undo survives a restart of the studio.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[dict]:
        text = read_or_none(self.path) or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def write(self, song: str, changes: dict[Path, str | None]) -> None:
        """Apply `changes` (path -> new text, None deletes) after journaling the old texts."""
        before = {str(p): read_or_none(p) for p in changes}
        if all(before[str(p)] == new for p, new in changes.items()):
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"song": song, "time": time.time(), "files": before}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for p, new in changes.items():
            if new is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write(p, new)

    def can_undo(self, song: str) -> bool:
        return any(e["song"] == song for e in self._entries())

    def undo(self, song: str) -> bool:
        """Restore the newest edit of `song`; False when there is none."""
        entries = self._entries()
        idx = next((i for i in range(len(entries) - 1, -1, -1) if entries[i]["song"] == song), None)
        if idx is None:
            return False
        for name, old in entries[idx]["files"].items():
            p = Path(name)
            if old is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write(p, old)
        rest = entries[:idx] + entries[idx + 1:]
        atomic_write(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in rest))
        return True
