"""A run folder belongs to one run: no silent overwrite, no silent hyper-parameter change on --resume."""

from __future__ import annotations

import sys
from pathlib import Path

from acetune.cli import run_command
from acetune.lora.keys import LORA_WEIGHTS_FILE
from acetune.training import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_fixtures import train_argv  # noqa: E402

FLAGS = ("--max_steps", "2", "--every_n_train_steps", "1")


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_new_run_into_a_used_folder_is_refused_then_overwrite_clears_it(train_tiny, tmp_path, capsys):
    checkpoint, data = train_tiny
    out = tmp_path / "run"
    assert run_command("train", train_argv(data, checkpoint, out, *FLAGS)) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capsys.readouterr()
    assert run_command("train", train_argv(data, checkpoint, out, *FLAGS, "--seed", "7")) == 1
    line = error_line(capsys)
    assert line.startswith(f"Error: {out}: holds another run's checkpoints (newest step-000002)")
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(out) == before  # nothing touched

    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "1", "--overwrite", "--seed", "7")) == 0
    assert "--overwrite: deleted" in capsys.readouterr().out
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]  # step-000002 of the old run is gone
    assert (out / "notes.txt").read_text() == "mine"  # only acetune's own files are cleared
    assert (out / "step-000001" / LORA_WEIGHTS_FILE).read_bytes() != before[f"step-000001/{LORA_WEIGHTS_FILE}"]


def test_resume_with_changed_hyper_parameters_is_refused_unless_allowed(train_tiny, tmp_path, capsys):
    checkpoint, data = train_tiny
    out = tmp_path / "run"
    assert run_command("train", train_argv(data, checkpoint, out, *FLAGS)) == 0
    before = snapshot(out)
    capsys.readouterr()
    changed = train_argv(data, checkpoint, out, "--max_steps", "3", "--every_n_train_steps", "1", "--resume",
                         "--learning_rate", "2e-3", "--batch_size", "2")
    assert run_command("train", changed) == 1
    line = error_line(capsys)
    assert "--resume would change the run's settings" in line and "--allow_changes" in line
    assert "--batch_size 1 -> 2" in line and "--learning_rate 0.001 -> 0.002" in line
    assert snapshot(out) == before

    assert run_command("train", [*changed, "--allow_changes"]) == 0
    printed = capsys.readouterr().out
    assert "--allow_changes: --batch_size 1 -> 2" in printed and "--allow_changes: --learning_rate" in printed
    assert [s for s, _ in ckpt.list_checkpoints(out)][-1] == 3
    # a longer run (--max_steps) is not a change of settings
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "4", "--every_n_train_steps", "1",
                                           "--learning_rate", "2e-3", "--batch_size", "2", "--resume")) == 0
