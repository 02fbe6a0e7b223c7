"""Typed errors that the CLI turns into one line: file, reason, what to do.

Raise these for anything a user can cause (bad input, bad flags, missing files). Keep `assert`
for our own invariants. `acetune.cli.main` prints `Error: <message>` and exits 1; set
`ACETUNE_DEBUG=1` to see the traceback.
"""

from __future__ import annotations

import os


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
