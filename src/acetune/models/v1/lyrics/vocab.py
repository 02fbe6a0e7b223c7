"""Find the lyric BPE vocab (`vocab.json`), which acetune does not ship.

Lookup order: an explicit path, next to the checkpoint (`layout.LYRIC_VOCAB_FILE`), the user
cache, and finally a one-time download from the ACE-Step repository into the user cache, checked
against a pinned sha256 so a changed or truncated file is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from acetune.errors import CheckpointError, InputError
from acetune.layout import LYRIC_VOCAB_FILE

logger = logging.getLogger(__name__)

# The file at the commit the golden vectors were made against (upstream d612523, 2025-06-04).
LYRIC_VOCAB_URL = (
    "https://raw.githubusercontent.com/ace-step/ACE-Step/d612523f50e252c0e138e68ae75b06223f96e934/"
    "acestep/models/lyrics_utils/vocab.json"
)
LYRIC_VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
_FIX = "pass the lyric vocab with --lyric_vocab PATH, or copy ACE-Step's acestep/models/lyrics_utils/vocab.json next to the checkpoint"


def user_cache_dir() -> Path:
    """acetune's cache folder: $ACETUNE_CACHE_DIR, else the platform's user cache + /acetune."""
    if os.environ.get("ACETUNE_CACHE_DIR"):
        return Path(os.environ["ACETUNE_CACHE_DIR"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "acetune" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "acetune"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_lyric_vocab(dest: Path, url: str = LYRIC_VOCAB_URL, sha256: str = LYRIC_VOCAB_SHA256,
                         timeout: float = 30.0) -> Path:
    """Download the vocab to `dest` atomically, verified by `sha256`.

    Raises:
        CheckpointError: offline / unreachable (one line, with the fix), or the checksum differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the lyric vocab once from %s to %s", url, dest)
    fd, tmp = tempfile.mkstemp(prefix=".vocab-", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URL
                    while block := resp.read(1 << 16):
                        out.write(block)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                raise CheckpointError(f"cannot download the lyric vocab from {url} ({reason}); are you offline?",
                                      path=dest, fix=_FIX) from None
        got = sha256_of(tmp)
        if got != sha256:
            raise CheckpointError(f"downloaded lyric vocab from {url} has sha256 {got}, expected {sha256}",
                                  path=dest, fix=_FIX)
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_lyric_vocab(path: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None,
                     *, cache_dir: str | os.PathLike | None = None, url: str = LYRIC_VOCAB_URL,
                     sha256: str = LYRIC_VOCAB_SHA256, download: bool = True) -> Path:
    """Return the path of the lyric vocab, downloading it once if nothing local has it.

    Args:
        path: an explicit vocab file (must exist; never replaced by a download).
        checkpoint_dir: the ACE-Step checkpoint folder; `vocab.json` there is used if present.
        cache_dir: defaults to `user_cache_dir()`; the download lands in `<cache_dir>/lyrics/vocab.json`.
        url, sha256: where to download from and the expected checksum (tests point these elsewhere).
        download: False to fail instead of downloading.

    Raises:
        InputError: `path` does not exist.
        CheckpointError: nothing local and the download failed or was refused.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("lyric vocab file not found", path=path, fix=_FIX)
        return path
    if checkpoint_dir is not None:
        beside = Path(checkpoint_dir) / LYRIC_VOCAB_FILE
        if beside.is_file():
            return beside
    cached = Path(cache_dir if cache_dir is not None else user_cache_dir()) / "lyrics" / LYRIC_VOCAB_FILE
    if cached.is_file():
        return cached
    if not download:
        raise CheckpointError("lyric vocab not found next to the checkpoint nor in the cache", path=cached, fix=_FIX)
    return download_lyric_vocab(cached, url=url, sha256=sha256)
