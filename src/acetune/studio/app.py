"""The studio's web app: a small Starlette JSON API plus the static page in `static/` (no CDN, no build step).

Security model (see docs/studio.md): the server binds 127.0.0.1 unless told otherwise; a
non-loopback host needs a token, sent as header, cookie or `?token=` once. On loopback the Host
header must be a loopback name (a web page elsewhere cannot reach the API through DNS rebinding),
and every request that changes something must carry the `X-Acetune: 1` header, which a cross-site
form cannot send. Files are served only from inside the data and work folders (`files.resolve_inside`).
"""

from __future__ import annotations

import hmac
import re
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from acetune.studio import edits, forms
from acetune.studio.files import ENCODED, Journal, PathRefused, relative_to_root, resolve_inside
from acetune.studio.runs import RunManager, list_checkpoints, list_validation, read_metrics
from acetune.studio.songs import SongIndex

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOKEN_COOKIE = "acetune_token"


class Studio:
    """Everything one studio serves: the song index, the edit journal, the runs."""

    def __init__(self, data_dir: Path | None, workdir: Path, token: str = "", loopback: bool = True):
        self.data_dir = data_dir.resolve() if data_dir else None
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token, self.loopback = token, loopback
        self.index = SongIndex(self.data_dir, self.workdir) if self.data_dir else None
        self.journal = Journal(self.workdir / ".studio" / "edits.jsonl")
        self.runs = RunManager(self.workdir)

    def roots(self) -> dict[str, Path]:
        return {"work": self.workdir, **({"data": self.data_dir} if self.data_dir else {})}

    def url_for(self, path: str | Path | None) -> str | None:
        """/files/<root>/<relative path> when `path` is inside a served root, else None."""
        if not path:
            return None
        for name, root in self.roots().items():
            rel = relative_to_root(root, Path(path))
            if rel is not None:
                from urllib.parse import quote

                return f"/files/{name}/{quote(rel)}"
        return None


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _song(studio: Studio, song_id: str):
    if studio.index is None or song_id not in studio.index.rows:
        return None
    return studio.index.rows[song_id]


def _song_detail(studio: Studio, row) -> dict:
    audio = studio.data_dir / row.id
    d = row.to_json(full=True)
    d.update(version=edits.song_version(audio), can_undo=studio.journal.can_undo(row.id),
             audio_url=studio.url_for(audio), waveform_url=studio.url_for(studio.index.waveform_path(row.id))
             if studio.index.waveform_path(row.id).is_file() else None)
    return d


# ---- songs --------------------------------------------------------------------------------------

async def api_info(request: Request):
    s: Studio = request.app.state.studio
    return JSONResponse({"data_dir": str(s.data_dir) if s.data_dir else None, "workdir": str(s.workdir),
                         "stages": list(forms.STAGES)})


async def api_songs(request: Request):
    s: Studio = request.app.state.studio
    if s.index is None:
        return JSONResponse({"total": 0, "rows": [], "page": 1, "pages": 1, "songs_in_folder": 0, "analysed": 0})
    p = request.query_params
    return JSONResponse(s.index.query(q=p.get("q", ""), sort=p.get("sort", "name"), desc=p.get("desc") == "1",
                                      filter=p.get("filter", "all"), page=int(p.get("page", 1) or 1),
                                      per_page=int(p.get("per_page", 50) or 50)))


async def api_rescan(request: Request):
    s: Studio = request.app.state.studio
    if s.index is not None:
        await run_in_threadpool(s.index.scan)
    return JSONResponse({"ok": True})


async def api_song(request: Request):
    s: Studio = request.app.state.studio
    row = _song(s, request.query_params.get("id", ""))
    if row is None:
        return _error("no such song", 404)
    if request.method == "PUT":
        body = await request.json()
        audio = s.data_dir / row.id
        new = {k: body[k] for k in ("caption", "lyrics", *edits.META_FIELDS) if k in body}
        current = {"caption": row.caption, "lyrics": row.lyrics}
        try:
            written = edits.save_song(s.journal, row.id, audio, row.sources, current, new, body.get("version"))
        except edits.EditConflict as e:
            return _error(str(e), 409)
        except edits.EditRefused as e:
            return _error(str(e), 400)
        row = s.index.refresh(row.id)
        return JSONResponse({"written": written, "song": _song_detail(s, row)})
    return JSONResponse(_song_detail(s, row))


async def api_undo(request: Request):
    s: Studio = request.app.state.studio
    row = _song(s, request.query_params.get("id", ""))
    if row is None:
        return _error("no such song", 404)
    if not s.journal.undo(row.id):
        return _error("nothing to undo for this song", 400)
    return JSONResponse({"song": _song_detail(s, s.index.refresh(row.id))})


async def api_bulk(request: Request):
    s: Studio = request.app.state.studio
    body = await request.json()
    rows = [r for r in (_song(s, i) for i in body.get("ids", [])) if r is not None]
    op = body.get("op", "")
    if op in ("add", "remove", "rename") and not str(body.get("tag", "")).strip():
        return _error("name the tag")
    try:
        changed = edits.bulk_edit(s.journal, rows, s.data_dir, op, body.get("tag", ""), body.get("new_tag", ""))
    except edits.EditRefused as e:
        return _error(str(e))
    for r in rows:
        s.index.refresh(r.id)
    return JSONResponse({"changed": changed, "selected": len(rows)})


# ---- stages and runs ------------------------------------------------------------------------------

def _form_argv(stage: str, values: dict):
    argv = forms.to_argv(stage, values)
    args = forms.check_argv(stage, argv)
    return argv, args


async def api_form(request: Request):
    s: Studio = request.app.state.studio
    stage = request.path_params["stage"]
    try:
        fields = forms.form_fields(stage)
    except forms.FormError as e:
        return _error(str(e), 404)
    data_dir = s.data_dir or s.workdir
    return JSONResponse({"stage": stage, "fields": fields,
                         "suggested": forms.suggested_values(stage, data_dir, s.workdir)})


async def api_command(request: Request):
    stage = request.path_params["stage"]
    body = await request.json()
    try:
        argv, _ = await run_in_threadpool(_form_argv, stage, body.get("values", {}))
    except forms.FormError as e:
        return JSONResponse({"error": str(e), "command": forms.command_line(stage, forms.to_argv(stage, {}))},
                            status_code=400)
    return JSONResponse({"argv": argv, "command": forms.command_line(stage, argv)})


async def api_start(request: Request):
    s: Studio = request.app.state.studio
    stage = request.path_params["stage"]
    body = await request.json()
    try:
        argv, args = await run_in_threadpool(_form_argv, stage, body.get("values", {}))
    except forms.FormError as e:
        return _error(str(e))
    out = str(s.workdir / args.output_dir) if stage == "train" else None  # the run's cwd is the work folder
    run = s.runs.start(stage, argv, output_dir=out)
    return JSONResponse(run.to_json())


async def api_caption(request: Request):
    """Caption a selection: one `acetune caption --files ...` run per folder of the selected songs."""
    s: Studio = request.app.state.studio
    body = await request.json()
    by_folder: dict[Path, list[str]] = {}
    for row in (_song(s, i) for i in body.get("ids", [])):
        if row is not None:
            by_folder.setdefault((s.data_dir / row.id).parent, []).append(row.name)
    if not by_folder:
        return _error("select songs first")
    started = []
    for folder, names in by_folder.items():
        values = {**body.get("values", {}), "data_dir": str(folder), "files": names}
        try:
            argv, _ = await run_in_threadpool(_form_argv, "caption", values)
        except forms.FormError as e:
            return _error(str(e))
        started.append(s.runs.start("caption", argv).to_json())
    return JSONResponse({"runs": started})


async def api_runs(request: Request):
    s: Studio = request.app.state.studio
    return JSONResponse([r.to_json() for r in reversed(list(s.runs.runs.values()))])


async def api_run_action(request: Request):
    s: Studio = request.app.state.studio
    run_id, action = request.path_params["run_id"], request.path_params["action"]
    if run_id not in s.runs.runs:
        return _error("no such run", 404)
    run = s.runs.runs[run_id]
    if action == "log":
        return JSONResponse({**s.runs.read_log(run_id, int(request.query_params.get("offset", 0) or 0)),
                             "run": run.to_json()})
    if request.method != "POST":
        return _error("use POST", 405)
    if action == "stop":
        return JSONResponse(s.runs.stop(run_id).to_json())
    if action == "resume":
        if run.status in ("running", "stopping"):
            return _error("the run is still running")
        new = s.runs.start(run.stage, s.runs.resume_argv(run_id), output_dir=run.output_dir, resumed_from=run_id)
        return JSONResponse(new.to_json())
    return _error("unknown action", 404)


async def api_monitor(request: Request):
    """Curves, checkpoints and validation renders of one training output folder."""
    s: Studio = request.app.state.studio
    folder = Path(request.query_params.get("dir", ""))
    if not folder.is_absolute() or not folder.is_dir():
        return _error("no such run folder", 404)
    data = read_metrics(folder, int(request.query_params.get("offset", 0) or 0))
    data["checkpoints"] = list_checkpoints(folder)
    data["validation"] = [{**v, "wav_url": s.url_for(v["wav"]), "png_url": s.url_for(v["png"])}
                          for v in list_validation(folder)]
    return JSONResponse(data)


async def api_export(request: Request):
    """The "export for ComfyUI" button: `acetune export` of one checkpoint with ComfyUI keys, alpha baked."""
    s: Studio = request.app.state.studio
    body = await request.json()
    ckpt = Path(body.get("checkpoint", ""))
    if not re.fullmatch(r"step-\d+", ckpt.name) or not ckpt.is_dir():
        return _error("pick a checkpoint folder (step-NNNNNN)")
    out = s.workdir / "exports" / f"{ckpt.parent.name}-{ckpt.name}_comfyui.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    values = {"input_name": str(ckpt), "output_name": str(out), "format": "comfyui", "bake_alpha": True}
    argv, _ = await run_in_threadpool(_form_argv, "export", values)
    return JSONResponse(s.runs.start("export", argv).to_json())


# ---- files, pages, security ----------------------------------------------------------------------

async def serve_file(request: Request):
    s: Studio = request.app.state.studio
    root = s.roots().get(request.path_params["root"])
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    if root is None:
        return PlainTextResponse("unknown root", status_code=404)
    try:
        if ENCODED.search(raw):
            raise PathRefused("percent-encoded path")
        path = resolve_inside(root, request.path_params["path"])
    except PathRefused as e:
        return PlainTextResponse(f"refused: {e}", status_code=403)
    if not path.is_file():
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path)


async def index_page(request: Request):
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def _authorised(request: Request, token: str) -> bool:
    given = (request.headers.get("x-acetune-token") or request.cookies.get(TOKEN_COOKIE)
             or request.query_params.get("token") or "")
    return hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """ASGI middleware: token, Host and write-header checks before any route runs."""

    def __init__(self, app, studio: Studio):
        self.app, self.studio = app, studio

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        s = self.studio
        refusal = None
        if s.loopback and (request.url.hostname or "") not in LOOPBACK_NAMES:
            refusal = PlainTextResponse("refused: the studio answers only to localhost", status_code=403)
        elif s.token and not _authorised(request, s.token):
            refusal = PlainTextResponse("refused: this studio needs its token (open the URL it printed, "
                                        "or send the X-Acetune-Token header)", status_code=401)
        elif request.method not in ("GET", "HEAD") and request.headers.get("x-acetune") != "1":
            refusal = PlainTextResponse("refused: missing X-Acetune header", status_code=403)
        if refusal is not None:
            return await refusal(scope, receive, send)
        if s.token and request.query_params.get("token") and request.url.path == "/":
            response = RedirectResponse("/", status_code=303)  # keep the token out of the address bar
            response.set_cookie(TOKEN_COOKIE, s.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(studio: Studio) -> Starlette:
    @asynccontextmanager
    async def lifespan(app):
        if studio.index is not None:  # in the background: the page is up at once, the table fills in
            studio.index.scan_in_background()
        yield
        studio.runs.stop_all()  # each stage saves what it can (train: a resumable checkpoint)

    routes = [
        Route("/", index_page),
        Route("/api/info", api_info),
        Route("/api/songs", api_songs),
        Route("/api/rescan", api_rescan, methods=["POST"]),
        Route("/api/song", api_song, methods=["GET", "PUT"]),
        Route("/api/song/undo", api_undo, methods=["POST"]),
        Route("/api/bulk", api_bulk, methods=["POST"]),
        Route("/api/caption", api_caption, methods=["POST"]),
        Route("/api/stages/{stage}/form", api_form),
        Route("/api/stages/{stage}/command", api_command, methods=["POST"]),
        Route("/api/stages/{stage}/run", api_start, methods=["POST"]),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}/{action}", api_run_action, methods=["GET", "POST"]),
        Route("/api/monitor", api_monitor),
        Route("/api/export", api_export, methods=["POST"]),
        Route("/files/{root}/{path:path}", serve_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.studio = studio
    app.add_middleware(Guard, studio=studio)
    return app
