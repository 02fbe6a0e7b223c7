"""FSDP full fine-tune over 2 CPU processes (gloo) equals one process with the same global batch, and a
checkpoint saved by 2 processes resumes on 1 and one saved by 1 resumes on 2 (`training/sharding.py`).

Randomness is keyed by the sample and dropout is off (`_fsdp_run.py`), so the runs differ only by
sharding, gradient reduction order and checkpoint gather/scatter. Tolerance, fp32 after 2 AdamW
steps: max |W_fsdp - W_one| <= 1e-5 (measured about 2e-6 after 4 steps; float32 summation order).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.training import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _fsdp_run import keyed_randomness  # noqa: E402
from train_fixtures import make_checkpoint, make_dataset, train_argv  # noqa: E402

TOLERANCE = 1e-5
TIMEOUT = 240
# Songs of one length and one prompt: the global batch is the same set of samples either way.
FLAGS = ("--full", "--max_steps", "2", "--every_n_train_steps", "1", "--warmup_steps", "0", "--text_dropout", "0",
         "--speaker_dropout", "0", "--lyrics_dropout", "0")
ONE = ("--batch_size", "1", "--accumulate_grad_batches", "2")  # 1 process x 2 micro-batches
TWO = ("--batch_size", "1", "--accumulate_grad_batches", "1")  # 2 processes x 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint, songs=4, frames=(24,), variants=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv: list[str], logs: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACETUNE_NO_PROGRESS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, str(HERE / "_fsdp_run.py"), "--fork_ranks", "2", str(logs), "--", *argv],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    outs = [(logs / f"rank{r}.{kind}").read_text() for r in range(2) for kind in ("out", "err")]
    assert proc.returncode == 0, (proc.stdout + proc.stderr + "".join(outs))[-4000:]
    return outs[0]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ckpt.FULL_WEIGHTS_FILE))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and len(a) > 50
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_fsdp_two_processes_equal_one_and_resume_across_process_counts(tiny, tmp_path, monkeypatch):
    checkpoint, data = tiny
    torch.set_num_threads(1)
    monkeypatch.setattr(torch.nn.functional, "dropout", torch.nn.functional.dropout)  # undone after the test
    monkeypatch.setattr(torch.nn.Dropout, "forward", torch.nn.Dropout.forward)
    from acetune.training import loop

    monkeypatch.setattr(loop.StepModule, "forward", loop.StepModule.forward)
    monkeypatch.setattr(loop.StepModule, "_keyed", False, raising=False)
    keyed_randomness()

    # one process, the reference
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "one", *FLAGS, *ONE)) == 0
    # two processes, FSDP
    out = _two_processes(train_argv(data, checkpoint, tmp_path / "two", *FLAGS, *TWO), tmp_path / "logs2")
    assert "processes 2" in out and "fine-tuned transformer" in out
    ref = _weights(tmp_path / "one" / "step-000002")
    base = _weights(tmp_path / "one" / "step-000001")
    assert _max_diff(ref, base) > 30 * TOLERANCE  # the weights did move (lr 1e-3, linear decay)
    assert _max_diff(_weights(tmp_path / "two" / "step-000002"), ref) <= TOLERANCE
    # the consolidated checkpoints hold the same tensors and optimizer state layout
    one_state = load_file(str(tmp_path / "one" / "step-000001" / ckpt.STATE_TENSORS_FILE))
    two_state = load_file(str(tmp_path / "two" / "step-000001" / ckpt.STATE_TENSORS_FILE))
    assert one_state.keys() == two_state.keys()

    # 2 -> 1: the 2-process step-1 checkpoint continues in one process
    shutil.copytree(tmp_path / "two" / "step-000001", tmp_path / "r21" / "step-000001")
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "r21", *FLAGS, *ONE, "--resume")) == 0
    assert _max_diff(_weights(tmp_path / "r21" / "step-000002"), ref) <= TOLERANCE

    # 1 -> 2: the 1-process step-1 checkpoint continues on two processes
    shutil.copytree(tmp_path / "one" / "step-000001", tmp_path / "r12" / "step-000001")
    out = _two_processes(train_argv(data, checkpoint, tmp_path / "r12", *FLAGS, *TWO, "--resume"), tmp_path / "logs3")
    assert "resumed from" in out
    assert _max_diff(_weights(tmp_path / "r12" / "step-000002"), ref) <= TOLERANCE
