"""Open the studio: a local web page to review and edit the songs, run the stages and watch training.

The songs table shows every song of --data_dir as `acetune build-dataset` reads it (caption, lyrics,
BPM, key, language, problems) plus what the audio measures (duration, rate, loudness, tempo, key,
clipping). Edits are saved into the song's own sidecar files (undo keeps the previous text). The
stage forms are built from the same flags as `acetune <stage> --help` and show the exact command.
Everything the studio keeps for itself (edit journal, analysis cache, run logs) goes under
--workdir/.studio/. See docs/studio.md.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from acetune.cli import arg
from acetune.errors import UsageError

EXAMPLES = """examples:
  acetune studio --data_dir songs/                   # then open http://127.0.0.1:7860
  acetune studio --data_dir D:\\music\\mystyle --workdir D:\\acetune_work --port 8000
  acetune studio --data_dir songs/ --host 0.0.0.0 --token "$(python -c 'import secrets;print(secrets.token_urlsafe())')"
"""
TOKEN_ENV = "ACETUNE_STUDIO_TOKEN"


@dataclass
class Args:
    data_dir: Path | None = arg(None, help="folder of songs and sidecars to review (any folder; scanned recursively)")
    workdir: Path = arg(Path("acetune_work"), help="folder for datasets, runs and exports the forms suggest, and "
                        "the studio's own files (.studio/: edit history, analysis cache, run logs)")
    host: str = arg("127.0.0.1", help="address to listen on; anything but loopback needs --token")
    port: int = arg(7860, help="port to listen on")
    token: str = arg("", help=f"secret the browser must present (required for a non-loopback --host; "
                              f"or set {TOKEN_ENV})")
    open_browser: bool = arg(True, help="open the page in the default browser")

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.data_dir = None if self.data_dir in (None, "") else Path(self.data_dir)
        self.token = self.token or os.environ.get(TOKEN_ENV, "")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise UsageError("--data_dir is not a folder", path=self.data_dir, fix="pass the folder holding your songs")
        if not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")
        if not is_loopback(self.host) and not self.token:
            raise UsageError(f"--host {self.host} lets other machines reach the studio, so it needs a token",
                             fix="add --token with a secret of your own (e.g. from `python -c \"import secrets; "
                                 f"print(secrets.token_urlsafe())\"`) or set {TOKEN_ENV}, or keep --host 127.0.0.1")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def run(args: Args) -> int:
    try:
        import uvicorn

        from acetune.studio.app import Studio, create_app
    except ImportError as e:
        raise UsageError(f"the studio needs its extra packages ({e.name} is missing)",
                         fix='pip install "acetune[studio]"') from None
    studio = Studio(args.data_dir, args.workdir, token=args.token, loopback=is_loopback(args.host))
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/" + ("?token=<your --token>" if args.token else "")  # never echo secrets
    print(f"acetune studio: {url}  (songs: {args.data_dir or 'none'}; work folder: {studio.workdir}; Ctrl-C stops)",
          flush=True)
    if args.open_browser:
        import threading
        import webbrowser

        real = url.replace("<your --token>", args.token)
        threading.Timer(1.0, webbrowser.open, args=(real,)).start()
    uvicorn.run(create_app(studio), host=args.host, port=args.port, log_level="warning")
    return 0
