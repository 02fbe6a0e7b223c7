"""Typed errors that the CLI turns into one line: file, reason, what to do.

Raise these for anything a user can cause (bad input, bad flags, missing files). Keep `assert`
for our own invariants. `acetune.cli.main` prints `Error: <message>` and exits 1; set
`ACETUNE_DEBUG=1` to see the traceback.
"""

from __future__ import annotations

import errno
import os
import re


class AcetuneError(Exception):
    """A user-facing error. `str(err)` is the one line the CLI prints."""

    def __init__(self, reason: str, *, path: str | os.PathLike | None = None, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [f"{self.path}: {self.reason}" if self.path else self.reason]
        if self.fix:
            parts.append(self.fix)
        return " — ".join(parts)


class UsageError(AcetuneError):
    """A flag or flag combination that cannot work."""


class InputError(AcetuneError):
    """A file the user gave us is missing, unreadable or malformed (audio, sidecar, dataset)."""


class CheckpointError(AcetuneError):
    """A model folder does not match the official layout (missing file, wrong key or shape)."""


class DownloadError(AcetuneError):
    """The Hugging Face Hub could not provide a model or dataset (not found, gated, offline, disk full)."""


class TrainingError(AcetuneError):
    """Training cannot continue (non-finite loss, dataset made for another model, ...)."""


# ---- file-system failures: one line per OSError class -------------------------------------------

_WINDOWS_PATH_LIMIT = 260  # MAX_PATH: longer paths fail unless Windows long paths are enabled
_FINISHED_KEPT = "finished work was kept"
_OS_LINES = {  # errno -> (reason, what to do)
    errno.ENOSPC: ("no space left on the disk", f"free some space (or write to another disk) and run the same "
                   f"command again; {_FINISHED_KEPT}"),
    getattr(errno, "EDQUOT", -1): ("disk quota exceeded", f"free some space (or write elsewhere) and run the same "
                                   f"command again; {_FINISHED_KEPT}"),
    errno.EROFS: ("the disk is read-only", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you may write to (and files you may read), or change "
                   "its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to, or change its permissions"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "rename or remove that file, or choose "
                    "another path"),
    errno.EEXIST: ("exists already (a file is in the way)", "remove or rename it, or choose another path"),
    errno.EISDIR: ("is a folder, not a file", "pass a file path"),
    errno.ENAMETOOLONG: ("the path is too long", "use a shorter folder path (Windows: or enable long paths, "
                         "LongPathsEnabled)"),
    errno.ENOENT: ("not found", "check the path"),
}
_LIBRARY_OS_ERROR = re.compile(r"os error (\d+)")  # safetensors (Rust) wraps I/O errors as "... (os error 28)"
_LIBRARY_PATH = re.compile(r'at path "([^"]+)"')


def from_os_error(err: BaseException) -> AcetuneError | None:
    """The one-line error for a file-system failure (an OSError, or a library error wrapping an OS error
    code), naming the file, the reason and what to do; None if `err` is not one."""
    if isinstance(err, OSError):
        code, path = err.errno, err.filename
        if getattr(err, "winerror", None) == 206:  # ERROR_FILENAME_EXCED_RANGE
            code = errno.ENAMETOOLONG
    else:
        found = _LIBRARY_OS_ERROR.search(str(err))
        if found is None:
            return None
        code = int(found.group(1))
        at = _LIBRARY_PATH.search(str(err))
        path = at.group(1) if at else None
    if (code == errno.ENOENT and os.name == "nt" and path is not None
            and len(os.path.abspath(os.fspath(path))) >= _WINDOWS_PATH_LIMIT):
        code = errno.ENAMETOOLONG  # Windows reports an over-long path as "not found"
    reason, fix = _OS_LINES.get(code, (None, "check the path and the disk"))
    if reason is None:
        reason = (getattr(err, "strerror", None) or str(err)).strip() or type(err).__name__
    if path is None:
        reason += " (while writing or reading a file the system did not name)"
    return AcetuneError(reason, path=path, fix=fix)
