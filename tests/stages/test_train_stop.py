"""Ctrl-C / SIGTERM during `acetune train`: finish the step, save, print the command that continues.

The signal is sent from inside the model's loss (mid-step), in process, so the stop point is exact.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.lora.keys import LORA_WEIGHTS_FILE
from acetune.training import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_fixtures import train_argv  # noqa: E402

FLAGS = ("--max_steps", "5", "--every_n_train_steps", "2")


@pytest.fixture
def tiny(train_tiny):
    return train_tiny


def signal_during_step(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Send `signum` to this process from inside the loss of optimizer step `step` (1 micro-batch a step)."""
    from acetune.models.v1.family import V1Family

    real, calls = V1Family.training_loss, {"n": 0}

    def loss_then_signal(self, model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(V1Family, "training_loss", loss_then_signal)


def one_line(err: str, start: str) -> str:
    lines = [s for s in err.splitlines() if s.startswith(start)]
    assert len(lines) == 1, err
    return lines[0]


def advised_argv(line: str) -> list[str]:
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[:2] == ["acetune", "train"] and words[-1] == "--resume"
    return words[2:]


def no_temp_folders(out: Path) -> bool:
    return not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ctrl_c_saves_the_step_and_the_advice_continues_exactly(tiny, tmp_path, monkeypatch, capsys):
    checkpoint, data = tiny
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "ref", *FLAGS)) == 0
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs in the background
    with monkeypatch.context() as patch:
        signal_during_step(patch, 3)
        code = run_command("train", train_argv(data, checkpoint, out, *FLAGS))
    err = capsys.readouterr().err
    assert code == 130
    line = one_line(err, "Stopped by Ctrl-C after step 3")
    assert f"saved {out / 'step-000003'}" in line
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 3] and no_temp_folders(out)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    assert run_command("train", advised_argv(line)) == 0  # the advice is true: it continues from step 3
    assert "resumed from" in capsys.readouterr().out
    a, b = (load_file(str(d / "step-000005" / LORA_WEIGHTS_FILE)) for d in (tmp_path / "ref", out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "stop + resume differs from one run"


def test_sigterm_exits_143(tiny, tmp_path, monkeypatch, capsys):
    checkpoint, data = tiny
    out = tmp_path / "run"
    signal_during_step(monkeypatch, 1, signal.SIGTERM)
    assert run_command("train", train_argv(data, checkpoint, out, *FLAGS)) == 143
    one_line(capsys.readouterr().err, "Stopped by SIGTERM after step 1")
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]


def test_second_ctrl_c_during_the_save_aborts_without_damage(tiny, tmp_path, monkeypatch, capsys):
    """The second signal lands while the stop checkpoint (step 3) is half written: it is dropped, step 2 stays."""
    checkpoint, data = tiny
    out = tmp_path / "run"
    signal_during_step(monkeypatch, 3)
    real_write = ckpt._write_json

    def write_then_second_signal(path, obj):
        real_write(path, obj)
        if path.parent.name.startswith(".step-000003"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ckpt, "_write_json", write_then_second_signal)
    assert run_command("train", train_argv(data, checkpoint, out, *FLAGS)) == 130
    line = one_line(capsys.readouterr().err, "Aborted:")
    assert str(out / "step-000002") in line
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2] and no_temp_folders(out)
    monkeypatch.undo()
    argv = advised_argv(line)
    assert run_command("train", [*argv[:argv.index("--max_steps") + 1], "3", *argv[argv.index("--max_steps") + 2:]]) == 0
    assert "at step 2" in capsys.readouterr().out
