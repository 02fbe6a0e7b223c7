"""Resumable download of a repo's large (LFS) files into the places `snapshot_download` looks first.

Why this exists: huggingface_hub 2.x downloads each file to a temporary name unique to the process and
deletes it on failure, so a download cut by Ctrl-C, a crash or a closed laptop starts from zero next
time; for the 7 GB ACE-Step transformer that is the difference between minutes and hours. Here each
large file is written to one stable partial file (`blobs/<sha256>.incomplete`, the name older
huggingface_hub versions used; in a `--local_dir`, `.cache/huggingface/download/<path>.incomplete`),
continued with an HTTP Range request, checked against the sha256 the Hub lists for it, and moved to
where `snapshot_download` finds it: the cache blob (it then only links it) or the `--local_dir` file
(it hashes it and keeps it). Partial files left by a killed huggingface_hub download are adopted too.
Small files are left to `snapshot_download`. Files are fetched as plain HTTP (the Hub's Xet bridge
serves those too), which is what makes a byte-exact resume possible.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors mean "connection dropped"

from acetune.errors import DownloadError
from acetune.progress import progress

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per write: at most this much is lost when the process is killed
RETRIES = 5  # dropped connections in a row before giving up (each retry continues from the bytes on disk)


def free_bytes(folder: Path) -> int:
    """Free space on the disk holding `folder` (its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _targets(repo_id: str, repo_type: str, f, sha256: str, cache_dir: Path, local_dir) -> tuple[Path, Path, list[Path]]:
    """(final path, our partial file, partial files of killed huggingface_hub runs) for one repo file."""
    from huggingface_hub.file_download import repo_folder_name

    if local_dir is not None:
        final = Path(local_dir) / f.path
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{f.path}.incomplete"
        orphans = sorted(partial.parent.glob(f"{Path(f.path).name}.*.incomplete"))
        return final, partial, orphans
    blobs = cache_dir / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "blobs"
    return blobs / sha256, blobs / f"{sha256}.incomplete", sorted(blobs.glob(f"{sha256}.*.incomplete"))


def fetch_large_files(repo_id: str, repo_type: str, commit: str, files: list, *, cache_dir: Path,
                      local_dir=None, endpoint: str) -> int:
    """Download every LFS file of `files` (huggingface_hub `RepoFile`s) not yet in place; returns bytes fetched.

    Raises:
        DownloadError: not enough free disk for what is left, or the bytes do not match the Hub's sha256.
        OSError: disk full (errno ENOSPC) while writing; the partial file is kept for the next run.
        huggingface_hub errors: the Hub refused a request (the caller turns them into one line).
    """
    todo = []
    for f in files:
        sha256 = getattr(getattr(f, "lfs", None), "sha256", None)
        if not sha256:
            continue  # a small git file: snapshot_download fetches it
        final, partial, orphans = _targets(repo_id, repo_type, f, sha256, cache_dir, local_dir)
        if final.is_file() and final.stat().st_size == f.size:
            continue
        todo.append((f, sha256, final, partial, orphans))
    if not todo:
        return 0
    have = sum(_adopt(partial, orphans) for _, _, _, partial, orphans in todo)
    need = sum(f.size for f, *_ in todo) - have
    free = free_bytes(todo[0][2].parent)
    if need > free:
        raise DownloadError(f"{repo_id} needs {need / 1e9:.2f} GB more but only {free / 1e9:.2f} GB are free",
                            path=todo[0][2].parent, fix="free some space, or set HF_HOME (or --local_dir) to a bigger disk")
    return sum(_fetch_one(repo_id, repo_type, commit, f, sha256, final, partial, endpoint)
               for f, sha256, final, partial, _ in todo)


def _adopt(partial: Path, orphans: list[Path]) -> int:
    """Keep the longest leftover partial file as ours; returns its size."""
    candidates = [p for p in [partial, *orphans] if p.is_file()]
    if not candidates:
        return 0
    best = max(candidates, key=lambda p: p.stat().st_size)
    if best != partial:
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.replace(best, partial)
    for p in candidates:
        if p != best and p.exists():
            p.unlink()
    return partial.stat().st_size


def _fetch_one(repo_id: str, repo_type: str, commit: str, f, sha256: str, final: Path, partial: Path,
               endpoint: str) -> int:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, f.path, repo_type=repo_type, revision=commit, endpoint=endpoint)
    headers = build_hf_headers()
    meta = get_hf_file_metadata(url, headers=headers, endpoint=endpoint)
    if meta.etag != sha256:
        return 0  # not stored under its sha256: leave it to snapshot_download
    location = meta.location or url
    if _host(location) != _host(url):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the Hub
    partial.parent.mkdir(parents=True, exist_ok=True)
    start = partial.stat().st_size if partial.is_file() else 0
    if start > f.size:
        partial.unlink()
        start = 0
    fetched = 0
    if start < f.size:
        bar = progress(total=f.size, initial=start, desc=f.path.split("/")[-1][:40], unit="B", unit_scale=True,
                       unit_divisor=1024)
        try:
            for attempt in range(RETRIES + 1):
                try:
                    fetched += _stream(location, headers, partial, bar)
                    break
                except httpx2.TransportError as err:  # a dropped connection: continue from the bytes on disk
                    if attempt == RETRIES:
                        raise
                    logger.warning("download of %s interrupted (%s); resuming at byte %d", f.path,
                                   err.__class__.__name__, partial.stat().st_size if partial.is_file() else 0)
                    time.sleep(min(2.0**attempt, 10.0))
        finally:
            bar.close()
    size = partial.stat().st_size
    if size != f.size or _sha256(partial) != sha256:
        partial.unlink()
        raise DownloadError(f"{f.path} of {repo_id} arrived damaged ({size:,} of {f.size:,} bytes, or its "
                            "sha256 differs from the Hub's)", fix="run the command again (the file is fetched anew)")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    return fetched


def _stream(location: str, headers: dict, partial: Path, bar) -> int:
    """GET the rest of the file after what `partial` holds, appending; returns the bytes written."""
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    start = partial.stat().st_size if partial.is_file() else 0
    req = dict(headers, Range=f"bytes={start}-") if start else headers
    written = 0
    # retry_on_exceptions=(): a dropped connection is retried by the caller, from the bytes on disk
    with http_stream_backoff("GET", location, headers=req, follow_redirects=True, retry_on_exceptions=(),
                             retry_on_status_codes=(429, 500, 502, 503, 504)) as response:
        hf_raise_for_status(response)
        if start and response.status_code != 206:  # the server ignored the Range: start over
            start = 0
            bar.reset(total=bar.total)
        with open(partial, "ab" if start else "wb") as out:
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                out.flush()
                written += len(chunk)
                bar.update(len(chunk))
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK * 8), b""):
            digest.update(block)
    return digest.hexdigest()


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc
