"""File-system faults in the stages: one line (file, reason, what to do), earlier work kept, no temp left.

Root ignores permissions and this machine has no full disk, so the faults are raised where the
stage writes (the same OSError the OS would give), in process.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import datasets
from safetensors import SafetensorError
from test_preprocess import build, make_songs, rows_by_key
from test_weight_checks import make_lora

from acetune.cli import run_command
from acetune.lora import file as lora_file
from acetune.training import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_fixtures import train_argv  # noqa: E402

READ_ONLY = "the disk is read-only — write to a folder on a writable disk"
DISK_FULL = ("no space left on the disk — free some space (or write to another disk) and run the same command again; "
             "finished work was kept")


def one_error(capsys) -> str:
    err = [s for s in capsys.readouterr().err.splitlines() if s.startswith("Error:")]
    assert len(err) == 1, err
    return err[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def raise_os_error(code: int, text: str):
    def fail(*args, **kwargs):
        target = next((a for a in args if isinstance(a, (str, Path))), None)
        raise OSError(code, text, str(target))
    return fail


def test_build_dataset_output_is_a_file_or_read_only(tmp_path, monkeypatch, capsys):
    songs = make_songs(tmp_path / "songs")
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(blocker)]) == 1
    assert one_error(capsys) == (f"Error: {blocker}: --output_name is an existing file, not a folder — pass a new "
                                 "folder name or delete the file")
    assert blocker.read_text() == "not a folder" and hidden(tmp_path) == []

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", raise_os_error(errno.EROFS, "Read-only file system"))
    out = tmp_path / "data"
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(out)]) == 1
    line = one_error(capsys)
    assert line.startswith(f"Error: {tmp_path / '.data.tmp-'}") and line.endswith(READ_ONLY)
    assert hidden(tmp_path) == [] and not out.exists()


def test_export_and_generate_into_read_only_folders(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from acetune.audio import io as audio_io

    lora = make_lora(tmp_path / "step-000001", tiny_ckpt)
    monkeypatch.setattr(lora_file, "save_file", raise_os_error(errno.EROFS, "Read-only file system"))
    out = tmp_path / "ro" / "style.safetensors"
    assert run_command("export", ["--input_name", str(lora), "--output_name", str(out)]) == 1
    assert one_error(capsys).endswith(READ_ONLY) and not out.exists() and hidden(tmp_path) == []

    monkeypatch.setattr(audio_io.tempfile, "mkstemp", raise_os_error(errno.EROFS, "Read-only file system"))
    song = tmp_path / "ro" / "song.wav"
    assert run_command("generate", ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "pop", "--duration", "1",
                                    "--steps", "2", "--output", str(song)]) == 1
    assert one_error(capsys).endswith(READ_ONLY) and not song.exists() and hidden(tmp_path) == []


def test_preprocess_disk_full_keeps_the_finished_part(tmp_path, tiny_ckpt, monkeypatch, capsys):
    dataset = build(make_songs(tmp_path / "songs"), tmp_path / "filenames")
    out = tmp_path / "prep"
    real, calls = datasets.Dataset.save_to_disk, []

    def second_part_fills_the_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            real(self, path, *args, **kwargs)  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", second_part_fills_the_disk)
    argv = ["--input_name", str(dataset), "--output_name", str(out), "--checkpoint_dir", str(tiny_ckpt),
            "--part_size", "2"]
    assert run_command("preprocess", argv) == 1
    line = one_error(capsys)
    assert line.endswith(DISK_FULL) and "/.tmp-" in line
    assert len(rows_by_key(out)) == 2 and hidden(out) == []  # the first part is whole, the second left no trace
    monkeypatch.undo()
    assert run_command("preprocess", argv) == 0 and len(rows_by_key(out)) == 3  # "run the same command again"


def test_checkpoint_save_disk_full_and_output_dir_a_file(train_tiny, tmp_path, monkeypatch, capsys):
    checkpoint, data = train_tiny
    out = tmp_path / "run"
    real = ckpt._write_safetensors

    def full_at_step_4(path, tensors, metadata):
        if ".step-000004" in str(path):
            raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28) at "
                                  f'path "{path}"')
        return real(path, tensors, metadata)

    monkeypatch.setattr(ckpt, "_write_safetensors", full_at_step_4)
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "5", "--every_n_train_steps", "2")) == 1
    line = one_error(capsys)
    assert line.endswith(DISK_FULL) and ".step-000004.tmp-" in line
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2] and hidden(out) == []

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_command("train", train_argv(data, checkpoint, blocker, "--max_steps", "1")) == 1
    assert one_error(capsys) == (f"Error: {blocker}: --output_dir is an existing file, not a folder — pass a folder "
                                 "name (new, or the run's own folder)")
