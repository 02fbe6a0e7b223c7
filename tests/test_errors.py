"""Every OSError class ends in the same one-line error: file, reason, what to do (errors.from_os_error)."""

from __future__ import annotations

import errno
import os

import pytest

from acetune.cli import run_command
from acetune.errors import from_os_error

CASES = [  # (error, expected line)
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"),
     "/data/out: permission denied — choose a folder you may write to (and files you may read), or change its permissions"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.wav"),
     "/mnt/ro/x.wav: the disk is read-only — write to a folder on a writable disk"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/sub"),
     "/data/file/sub: a part of this path is a file, not a folder — rename or remove that file, or choose another path"),
    (FileExistsError(errno.EEXIST, "File exists", "/data/out"),
     "/data/out: exists already (a file is in the way) — remove or rename it, or choose another path"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/prep/part"),
     "/data/prep/part: no space left on the disk — free some space (or write to another disk) and run the same "
     "command again; finished work was kept"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x" * 10),
     "/x/x/x/x/x/x/x/x/x/x: the path is too long — use a shorter folder path (Windows: or enable long paths, "
     "LongPathsEnabled)"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data"), "/data: is a folder, not a file — pass a file path"),
]


@pytest.mark.parametrize(("err", "line"), CASES, ids=[type(e).__name__ + str(e.errno) for e, _ in CASES])
def test_each_os_error_class_is_one_line(err, line):
    assert from_os_error(err).line() == line


def test_library_errors_wrapping_an_os_error():
    from safetensors import SafetensorError

    err = SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "/r/x.tmp"')
    assert from_os_error(err).line().startswith("/r/x.tmp: no space left on the disk — free some space")
    assert from_os_error(ValueError("nothing to do with files")) is None
    assert "(while writing or reading a file the system did not name)" in from_os_error(OSError(errno.ENOSPC, "x")).line()


def test_windows_long_path(monkeypatch):
    err = OSError(errno.EINVAL, "The filename or extension is too long")
    err.winerror = 206  # what Windows sets on an over-long path
    err.filename = "C:\\" + "a" * 300
    assert "the path is too long" in from_os_error(err).line()
    monkeypatch.setattr(os, "name", "nt")  # "not found" on a path over MAX_PATH is the same fault on Windows
    assert "the path is too long" in from_os_error(FileNotFoundError(errno.ENOENT, "nf", "/" + "b" * 300)).line()


def test_cli_turns_an_os_error_into_one_line(monkeypatch, capsys, tmp_path):
    from acetune.stages import doctor

    def run(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x")

    monkeypatch.setattr(doctor, "run", run)
    assert run_command("doctor", ["--checkpoint_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "Error: /data/x: no space left on the disk — free some space (or write to another disk) and run the same "
        "command again; finished work was kept"]


def test_config_latin1_and_wrong_types(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_bytes('{"exp_name": "caf\u00e9"}'.encode("latin-1"))
    assert run_command("export", ["--config", str(cfg), "--input_name", "x"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"Error: {cfg}: config file is not UTF-8 text (byte 0xe9 at offset 17) — save it as UTF-8 (any editor's "
        "\"Save as ... UTF-8\")"]
    cfg.write_text('{"max_steps": [1, 2]}')
    assert run_command("train", ["--config", str(cfg), "--dataset_path", "d", "--checkpoint_dir", "c"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"Error: {cfg}: config value 'max_steps' must be int, not list [1, 2] — fix it in the file (`--max_steps` on "
        "the command line overrides it)"]
    cfg.write_text('{"precision": "bf17"}')
    assert run_command("train", ["--config", str(cfg), "--dataset_path", "d", "--checkpoint_dir", "c"]) == 1
    assert "config value 'precision' is 'bf17', not one of bf16-mixed" in capsys.readouterr().err
