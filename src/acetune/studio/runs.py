"""Stage runs as subprocesses (`python -m acetune <stage> ...`), with a live log, progress, stop and resume.

Each run's output (stdout and stderr merged) is appended to `<workdir>/.studio/runs/<id>.log`;
the last tqdm bar (a segment ending in "\\r") is kept apart as the run's progress line. A run is
stopped with SIGINT, the Ctrl-C a terminal user would press: `acetune train` then finishes its step,
writes a resumable checkpoint and exits 130; a second stop sends SIGTERM. Resume starts the same
command again (with `--resume` for train; the other stages continue on their own). Runs live in their
own process group (session), so only the studio's stop reaches them.

Reading `metrics.jsonl` (written by `acetune train` into its output folder, one JSON object per
line: {"step", "time", "train/loss", ...}) and listing validation renders and checkpoints are here
too, as the training monitor's data.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from acetune.studio.forms import command_line
from acetune.training.loggers import METRICS_FILE  # written by every train run

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # cursor moves of nested tqdm bars
_BAR = re.compile(r"\d+%\||\[\d+:\d+(?::\d+)?(?:<|, )")  # "38%|", or "[00:17<" / "[00:17, " (no total)


@dataclass
class Run:
    id: str
    stage: str
    argv: list[str]
    command: str
    output_dir: str | None = None  # train: where checkpoints and metrics.jsonl go
    status: str = "running"  # running | stopping | finished | failed | stopped
    returncode: int | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    progress: str = ""
    resumed_from: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class RunManager:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.folder = workdir / ".studio" / "runs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, Run] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self._load()
        self._counter = itertools.count(len(self.runs) + 1)

    # ---- persistence (the list survives a restart of the studio) ----------------------------------

    def _load(self) -> None:
        try:
            for d in json.loads((self.folder / "runs.json").read_text(encoding="utf-8")):
                run = Run(**d)
                if run.status in ("running", "stopping"):  # the studio died while it ran
                    run.status = "stopped"
                self.runs[run.id] = run
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            pass

    def _save(self) -> None:
        tmp = self.folder / "runs.json.tmp"
        tmp.write_text(json.dumps([r.to_json() for r in self.runs.values()], indent=1), encoding="utf-8")
        os.replace(tmp, self.folder / "runs.json")

    def log_path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.log"

    # ---- start / stop / resume --------------------------------------------------------------------

    def start(self, stage: str, argv: list[str], output_dir: str | None = None, resumed_from: str | None = None) -> Run:
        run_id = f"{next(self._counter):03d}-{stage}"
        run = Run(run_id, stage, list(argv), command_line(stage, argv), output_dir=output_dir,
                  resumed_from=resumed_from)
        env = dict(os.environ, PYTHONUNBUFFERED="1", ACETUNE_NO_PROGRESS="0", PYTHONIOENCODING="utf-8")
        kw: dict = {"start_new_session": True}
        if os.name == "nt":  # no sessions on Windows; a new group receives CTRL_BREAK_EVENT
            kw = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        log = open(self.log_path(run_id), "ab")
        log.write(f"$ {run.command}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "acetune", stage, *argv], cwd=self.workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
        with self.lock:
            self.runs[run_id] = run
            self.procs[run_id] = proc
            self._save()
        threading.Thread(target=self._pump, args=(run, proc, log), name=f"run-{run_id}", daemon=True).start()
        return run

    def _pump(self, run: Run, proc: subprocess.Popen, log) -> None:
        """Copy the child's output into the log; bars (segments ending in \\r) become `run.progress`."""
        pending = b""
        bars: dict[str, str] = {}  # bar description -> its latest line (nested bars: train + sampling)
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            pending += chunk
            parts = re.split(rb"(\r\n|\r|\n)", pending)
            pending = parts.pop()  # an unfinished segment waits for its end
            for text, sep in zip(parts[0::2], parts[1::2]):
                line = _ANSI.sub("", text.decode("utf-8", "replace")).strip()
                if _BAR.search(line):
                    # a message printed while a bar is open lands after the bar's closing "]" on one line
                    cut = line.rfind("]") + 1 or len(line)
                    line, rest = line[:cut].strip(), line[cut:].strip()
                    desc = re.sub(r"\s*\(.*?\)", "", line.split(":", 1)[0]) if ":" in line else ""
                    bars[desc] = line  # "Saving the dataset (0/1 shards)" and "(1/1 shards)" are one bar
                    run.progress = " · ".join(list(bars.values())[-3:])
                    if sep != b"\r" and "100%|" in line:  # the log keeps each bar's final line only
                        log.write(line.encode() + b"\n")
                    if rest:
                        log.write(rest.encode() + b"\n")
                    continue
                if line or sep != b"\r":
                    log.write(line.encode() + b"\n")
            log.flush()
        if pending:
            log.write(pending + b"\n")
        code = proc.wait()
        log.write(f"[exit code {code}]\n".encode())
        log.close()
        with self.lock:
            run.returncode, run.ended = code, time.time()
            if run.status == "stopping" or code in (130, 143, -2, -15):
                run.status = "stopped"
            else:
                run.status = "finished" if code == 0 else "failed"
            self.procs.pop(run.id, None)
            self._save()

    def stop(self, run_id: str) -> Run:
        run, proc = self.runs[run_id], self.procs.get(run_id)
        if proc is None or proc.poll() is not None:
            return run
        first = run.status != "stopping"
        if os.name == "nt":
            proc.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            proc.send_signal(signal.SIGINT if first else signal.SIGTERM)
        run.status = "stopping"
        return run

    def resume_argv(self, run_id: str) -> list[str]:
        run = self.runs[run_id]
        argv = list(run.argv)
        if run.stage == "train" and "--resume" not in argv and "--resume_from" not in argv:
            argv.append("--resume")
        return argv

    def stop_all(self) -> None:
        for run_id in list(self.procs):
            self.stop(run_id)

    def read_log(self, run_id: str, offset: int = 0, limit: int = 200_000) -> dict:
        path = self.log_path(run_id)
        size = path.stat().st_size if path.exists() else 0
        offset = 0 if offset > size else offset
        with open(path, "rb") as f:
            f.seek(max(offset, size - limit) if offset == 0 else offset)
            data = f.read(limit)
        return {"text": data.decode("utf-8", "replace"), "offset": offset + len(data) if offset else size}


def read_metrics(run_dir: Path, offset: int = 0) -> dict:
    """New complete lines of `run_dir/metrics.jsonl` from byte `offset`.

    `reset` is true when the file shrank (a resume dropped steps after its checkpoint): the caller
    then starts its curves again from the returned points.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return {"points": [], "offset": 0, "reset": offset > 0}
    size = path.stat().st_size
    reset = offset > size
    start = 0 if reset else offset
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
    points = []
    for line in data[:end].splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("step"), int):
            points.append(obj)
    return {"points": points, "offset": start + end, "reset": reset}


def list_checkpoints(run_dir: Path) -> list[dict]:
    out = []
    for d in sorted(run_dir.glob("step-*")):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and d.is_dir():
            out.append({"step": int(m.group(1)), "path": str(d)})
    return out


def list_validation(run_dir: Path) -> list[dict]:
    """Validation renders: [{step, index, prompt, wav, png}] with paths, newest step last."""
    out = []
    for d in sorted((run_dir / "validation").glob("step-*")):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if not m:
            continue
        prompts = {}
        try:
            for rec in json.loads((d / "prompts.json").read_text(encoding="utf-8"))["renders"]:
                prompts[rec.get("file")] = rec.get("prompt", "")
        except (FileNotFoundError, json.JSONDecodeError, AttributeError, TypeError, KeyError):
            pass
        for wav in sorted(d.glob("*.wav")):
            png = wav.with_suffix(".png")
            out.append({"step": int(m.group(1)), "index": wav.stem, "prompt": prompts.get(wav.name, ""),
                        "wav": str(wav), "png": str(png) if png.is_file() else None})
    return out
