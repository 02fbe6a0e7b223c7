"""A small local Hugging Face Hub for the tests (stdlib `http.server` on 127.0.0.1).

It answers what huggingface_hub 2.x asks for `snapshot_download` / `hf_hub_download` (read from its
source: `HfApi.repo_info`, `HfApi.list_repo_tree`, `get_hf_file_metadata`, `http_get`):

    GET  /api/{models|datasets}/{owner}/{name}[/revision/{rev}]   repo info: sha, siblings, gated
    GET  /api/{models|datasets}/{owner}/{name}/tree/{rev}[/{dir}]  file list (oid, size, lfs)
    HEAD|GET /[datasets/]{owner}/{name}/resolve/{rev}/{path}       a file: ETag + X-Repo-Commit; LFS
         files answer 302 to a "CDN" on another host name (localhost) with X-Linked-Etag (their sha256)
         and X-Linked-Size, as the Hub does
    GET  /_cdn/{sha256}                                            LFS bytes, with Range (206)

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo), so huggingface_hub raises its own typed errors. `stall(sha256, after)` makes the next
download of a blob stop after `after` bytes and hang until released, then drop the connection (to
kill a client half-way, or cut its connection); `log` records every request as (method, path, Range
header) and `served` the bytes sent per blob.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".wav", ".flac", ".mp3", ".ogg")


@dataclass
class HubFile:
    data: bytes
    oid: str  # git blob sha1
    sha256: str | None  # set for LFS files

    @classmethod
    def of(cls, path: str, data: bytes) -> HubFile:
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = path.endswith(LFS_SUFFIXES) or len(data) > 200_000
        return cls(data, oid, hashlib.sha256(data).hexdigest() if lfs else None)


@dataclass
class HubRepo:
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False


class LocalHub:
    """Repos in memory, served over HTTP; `url` is the HF_ENDPOINT to use."""

    def __init__(self, token: str = "hf_test_secret_token_123"):
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.token = token  # the one token that opens gated repos
        self.log: list[tuple[str, str, str | None]] = []
        self.served: Counter = Counter()
        self._stalls: dict[str, tuple[int, threading.Event]] = {}
        self._events: list[threading.Event] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        for event in self._events:
            event.set()
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes] | Path, *, repo_type: str = "model", branch: str = "main",
            gated: bool = False, commit: str | None = None) -> str:
        """A new commit holding `files` (a dict or every file under a folder) on `branch`; returns its sha
        (`commit` forces one, e.g. a pinned revision acetune asks for)."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        repo = self.repos.setdefault((repo_type, repo_id), HubRepo())
        repo.gated = repo.gated or gated
        content = {path: HubFile.of(path, data) for path, data in files.items()}
        digest = hashlib.sha1(repr((repo_id, len(repo.commits), sorted((p, f.oid) for p, f in content.items())))
                              .encode()).hexdigest()
        digest = commit or digest
        repo.commits[digest] = content
        repo.refs[branch] = digest
        return digest

    def tag(self, repo_id: str, name: str, commit: str, repo_type: str = "model") -> None:
        self.repos[(repo_type, repo_id)].refs[name] = commit

    def stall(self, sha256: str, after: int) -> threading.Event:
        """The next GET of this blob sends `after` bytes, then hangs until the returned event is set, and
        then closes the connection short (the client sees a dropped connection)."""
        event = threading.Event()
        self._events.append(event)
        self._stalls[sha256] = (after, event)
        return event

    def blob(self, sha256: str) -> bytes:
        for repo in self.repos.values():
            for files in repo.commits.values():
                for f in files.values():
                    if f.sha256 == sha256:
                        return f.data
        raise KeyError(sha256)


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._route(head=True)

        def do_GET(self):
            self._route(head=False)

        # ---- plumbing ----
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _error(self, status: int, code: str, head: bool, extra: dict | None = None):
            body = json.dumps({"error": code}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": code, **(extra or {}),
                                      "Content-Type": "application/json"}, head)

        def _repo(self, repo_type: str, repo_id: str, head: bool):
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                self._error(404 if self.headers.get("authorization") else 401, "RepoNotFound", head)
                return None
            if repo.gated:
                auth = self.headers.get("authorization") or ""
                if auth != f"Bearer {hub.token}":
                    self._error(403 if auth else 401, "GatedRepo", head)
                    return None
            return repo

        def _commit(self, repo: HubRepo, rev: str, head: bool):
            rev = unquote(rev)
            sha = repo.refs.get(rev) or (rev if rev in repo.commits else None)
            if sha is None:
                self._error(404, "RevisionNotFound", head)
            return sha

        def _route(self, head: bool):
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            hub.log.append((self.command, url.path, self.headers.get("Range")))
            if parts[0] == "_cdn":
                return self._blob(parts[1], head)
            if parts[0] == "api" and len(parts) >= 4:
                repo_type = {"models": "model", "datasets": "dataset"}.get(parts[1])
                repo = self._repo(repo_type, f"{parts[2]}/{parts[3]}", head)
                if repo is None:
                    return
                rest = parts[4:]
                if not rest or rest[0] == "revision":
                    sha = self._commit(repo, rest[1] if rest else "main", head)
                    if sha:
                        self._info(repo_type, f"{parts[2]}/{parts[3]}", repo, sha, head)
                    return
                if rest[0] == "tree":
                    sha = self._commit(repo, rest[1], head)
                    if sha:
                        self._tree(repo.commits[sha], "/".join(rest[2:]), head)
                    return
                return self._error(404, "EntryNotFound", head)
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            if repo_type == "dataset":
                parts = parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo(repo_type, f"{parts[0]}/{parts[1]}", head)
                if repo is None:
                    return
                sha = self._commit(repo, parts[3], head)
                if sha:
                    self._resolve(repo.commits[sha], sha, "/".join(parts[4:]), head)
                return
            self._error(404, "EntryNotFound", head)

        # ---- endpoints ----
        def _info(self, repo_type, repo_id, repo, sha, head):
            files = repo.commits[sha]
            body = {"id": repo_id, "_id": repo_id, "sha": sha, "private": False, "gated": "auto" if repo.gated else False,
                    "disabled": False, "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [],
                    "lastModified": "2026-01-01T00:00:00.000Z", "downloads": 0, "likes": 0}
            if repo_type == "model":
                body["library_name"] = "diffusers"
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

        def _tree(self, files, folder, head):
            prefix = f"{folder}/" if folder else ""
            entries, dirs = [], set()
            for path in sorted(files):
                if not path.startswith(prefix):
                    continue
                f = files[path]
                entry = {"type": "file", "oid": f.oid, "size": len(f.data), "path": path}
                if f.sha256:
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                entries.append(entry)
                dirs.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
            entries += [{"type": "directory", "oid": "0" * 40, "path": d} for d in sorted(dirs) if d.startswith(prefix)]
            self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)

        def _resolve(self, files, sha, path, head):
            f = files.get(path)
            if f is None:
                return self._error(404, "EntryNotFound", head, {"X-Repo-Commit": sha})
            if f.sha256:  # LFS: redirect to the "CDN" (another host name, as the Hub's storage is)
                location = f"http://localhost:{hub.port}/_cdn/{f.sha256}"
                return self._send(302, b"", {"Location": location, "X-Repo-Commit": sha, "ETag": f'"{f.oid}"',
                                             "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": len(f.data)}, head)
            self._ranged(f.data, {"ETag": f'"{f.oid}"', "X-Repo-Commit": sha}, head, key=None)

        def _blob(self, sha256, head):
            try:
                data = hub.blob(sha256)
            except KeyError:
                return self._error(404, "EntryNotFound", head)
            self._ranged(data, {"ETag": f'"{sha256}"'}, head, key=sha256)

        def _ranged(self, data: bytes, headers: dict, head: bool, key: str | None):
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            self.send_response(status)
            for k, v in {**headers, "Accept-Ranges": "bytes", "Content-Length": len(body)}.items():
                self.send_header(k, str(v))
            self.end_headers()
            if head:
                return
            stall = hub._stalls.pop(key, None) if key else None
            try:
                if stall is not None:
                    after, event = stall
                    self.wfile.write(body[:after])
                    self.wfile.flush()
                    hub.served[key] += min(after, len(body))
                    event.wait(120)
                    return  # connection closes short: the client never gets the rest
                self.wfile.write(body)
                if key:
                    hub.served[key] += len(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
