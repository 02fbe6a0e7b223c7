"""Messages that decoding libraries print on their own, re-said with the file they concern.

libmpg123 (inside libsndfile) writes "error: big_values too large!" lines straight to the C-level
stderr, and Python libraries (torch, numpy, soundfile) warn through `warnings`; in a run over a
thousand songs neither says which song. `attributed_to(path)` collects both while one file decodes
and logs one warning line that names the file, counts the messages and quotes the first.

The C-level capture swaps file descriptor 2 for the duration of the block, so it is process-wide:
it is taken only under a lock, and only for the decoders known to print (`captures_c_stderr`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_STDERR_LOCK = threading.Lock()
_NOISY_C_DECODERS = (".mp3",)  # libsndfile's MP3 path (libmpg123) prints its own errors and notes
_ADVICE = "the audio may hold glitches where the decoder skipped data: listen to it, or re-encode it as .wav or .flac"


def captures_c_stderr(path: Path) -> bool:
    return path.suffix.lower() in _NOISY_C_DECODERS


@contextmanager
def _c_stderr_lines(enabled: bool):
    """Yield a list that holds, after the block, the lines C code wrote to fd 2 inside it."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(s.strip() for s in sink.read().decode("utf-8", "replace").splitlines() if s.strip())


@contextmanager
def attributed_to(path: str | os.PathLike, what: str = "decoding"):
    """Run the block with library messages collected; then one warning naming `path` if there were any."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught, _c_stderr_lines(captures_c_stderr(path)) as c_lines:
        warnings.simplefilter("always")
        yield
    if c_lines:
        first = c_lines[0] if len(c_lines[0]) <= 120 else c_lines[0][:117] + "..."
        more = f" and {len(c_lines) - 1} more line(s)" if len(c_lines) > 1 else ""
        logger.warning("%s: the decoder printed %r%s; %s", path, first, more, _ADVICE)
    for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):  # each once, in order
        logger.warning("%s: while %s: %s", path, what, text)
