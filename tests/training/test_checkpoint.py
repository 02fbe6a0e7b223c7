"""Checkpoint folders: bitwise resume after a real SIGKILL, atomic saves, pruning, state round-trips.

The kill tests run `_tiny_run.py` (a miniature loop over the real modules) in subprocesses:
phase 1 starts two runs that stall (Prodigy after step 4's checkpoint, AdamW halfway through
writing step 6's) and SIGKILLs them; phase 2 runs the uninterrupted references and resumes the
killed runs in one process. Three interpreter starts (torch + peft imports, ~5 s CPU each) are
the whole cost; the training itself takes milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acetune.errors import CheckpointError, UsageError
from acetune.lora.keys import LORA_WEIGHTS_FILE
from acetune.training import checkpoint as ckpt
from acetune.training.optim import build_lr_scheduler, build_optimizer

SCRIPT = Path(__file__).with_name("_tiny_run.py")
TIMEOUT = 180  # seconds; generous because the test machine is shared


def _spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _kill_at(proc: subprocess.Popen, marker: str) -> None:
    """Read stdout until `marker`, then SIGKILL the process (TerminateProcess on Windows)."""
    for line in proc.stdout:
        if line.strip() == marker:
            proc.kill()
            proc.wait(TIMEOUT)
            return
    proc.wait(TIMEOUT)
    pytest.fail(f"run exited ({proc.returncode}) before printing {marker!r}:\n{proc.stderr.read()[-3000:]}")


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    d = {name: base / name for name in ("ref_adamw", "ref_prodigy", "kill_adamw", "kill_prodigy")}
    procs = []
    try:
        # Phase 1: an AdamW run killed halfway through writing step 6 (after step 4's checkpoint),
        # a Prodigy run killed right after step 4's checkpoint.
        procs.append(kill_a := _spawn(f"--run=adamw={d['kill_adamw']}", "--hang_in_save", "6"))
        procs.append(kill_p := _spawn(f"--run=prodigy={d['kill_prodigy']}", "--hang_after_save", "4"))
        _kill_at(kill_a, "MIDSAVE 6")
        _kill_at(kill_p, "SAVED 4")

        # What the crashes left behind, before anything touches it.
        after_kill = {name: sorted(p.name for p in d[name].iterdir()) for name in ("kill_adamw", "kill_prodigy")}
        partial = [p for p in d["kill_adamw"].iterdir() if p.name.startswith(".step-000006.tmp-")]
        partial_files = sorted(p.name for p in partial[0].iterdir()) if partial else []
        latest_after_kill = ckpt.find_latest_checkpoint(d["kill_adamw"])

        # Phase 2, one process (imports cost more than training): the uninterrupted references
        # (empty folders, so --resume starts them fresh) and the resumes of the killed runs.
        names = ("ref_adamw", "ref_prodigy", "kill_adamw", "kill_prodigy")
        runs = [f"--run={name.split('_')[1]}={d[name]}" for name in names]
        procs.append(resume := _spawn(*runs, "--resume"))
        resumed_out = _finish(resume)
    finally:
        for proc in procs:  # never leave a stalled run behind when something above fails
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    return {"dirs": d, "after_kill": after_kill, "partial_files": partial_files,
            "latest_after_kill": latest_after_kill, "resumed_out": resumed_out}


def _assert_same_final(a: Path, b: Path) -> None:
    fa, fb = ckpt.find_latest_checkpoint(a), ckpt.find_latest_checkpoint(b)
    assert fa.name == fb.name == "step-000010"
    for name in (LORA_WEIGHTS_FILE, ckpt.STATE_TENSORS_FILE, ckpt.STATE_FILE, ckpt.TRAIN_CONFIG_FILE):
        assert (fa / name).read_bytes() == (fb / name).read_bytes(), f"{name} differs after resume"
    # and not trivially: the LoRA really trained (B starts at zero)
    lora = ckpt.load_checkpoint(fa, restore_rng=False).lora_state
    assert all(t.abs().sum() > 0 for k, t in lora.items() if "lora_B" in k)


def test_resume_after_sigkill_is_bitwise(runs):
    # Prodigy, killed (SIGKILL) while idle right after step 4's checkpoint, resumed to step 10.
    assert runs["after_kill"]["kill_prodigy"] == ["step-000002", "step-000004"]
    assert runs["resumed_out"].count("RESUMED 4") == 2 and runs["resumed_out"].count("DONE 10") == 4
    _assert_same_final(runs["dirs"]["ref_prodigy"], runs["dirs"]["kill_prodigy"])


def test_kill_during_save_keeps_previous_checkpoint(runs):
    # AdamW, killed after the LoRA file of step 6 was written, before the state: a partial temp folder.
    names = runs["after_kill"]["kill_adamw"]
    assert names[-2:] == ["step-000002", "step-000004"] and names[0].startswith(".step-000006.tmp-")
    assert runs["partial_files"] == [LORA_WEIGHTS_FILE]
    assert runs["latest_after_kill"].name == "step-000004"
    # The resumed run went on from step 4, removed the partial folder, and ended bitwise equal.
    assert not [p for p in runs["dirs"]["kill_adamw"].iterdir() if p.name.startswith(".")]
    _assert_same_final(runs["dirs"]["ref_adamw"], runs["dirs"]["kill_adamw"])


# ---------------------------------------------------------------------------------------------
# In-process: round-trips, pruning, errors
# ---------------------------------------------------------------------------------------------


def _trained(name: str, steps: int = 3):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer(params, name, lr=1e-2 if name == "adamw" else 1.0)
    sched = build_lr_scheduler(opt, warmup_steps=1, max_steps=10, optimizer_name=name)
    for _ in range(steps):
        (params[0].sum() ** 2 + params[1].pow(3).sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return params, opt, sched


def _save(out: Path, step: int, opt, sched, **kw) -> Path:
    lora = {"blk.lora_A.weight": torch.full((2, 3), float(step)), "blk.lora_B.weight": torch.zeros(4, 2)}
    return ckpt.save_checkpoint(out, step, lora_state=lora, adapter_config={"r": 2}, optimizer=opt,
                                scheduler=sched, config={"seed": 1, "out": out}, **kw)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))


@pytest.mark.parametrize("name", ["adamw", "prodigy"])
def test_optimizer_scheduler_state_round_trip(tmp_path, name, monkeypatch):
    params, opt, sched = _trained(name)
    path = _save(tmp_path, 3, opt, sched, epoch=1, extra={"micro_batches": 6, "t": torch.arange(3)})
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt.CHECKPOINT_FILES)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called while loading a checkpoint")

    monkeypatch.setattr(torch, "load", no_pickle)
    fresh, opt2, sched2 = _trained(name, steps=0)
    loaded = ckpt.load_checkpoint(path, optimizer=opt2, scheduler=sched2)
    assert _same(opt.state_dict(), opt2.state_dict())  # param_groups (tuple betas, inf, d...) and per-param state
    assert _same(sched.state_dict(), sched2.state_dict())
    assert (loaded.step, loaded.epoch, loaded.extra["micro_batches"]) == (3, 1, 6)
    assert torch.equal(loaded.extra["t"], torch.arange(3))
    assert loaded.config == {"seed": 1, "out": str(tmp_path)} and loaded.adapter_config == {"r": 2}
    assert torch.equal(loaded.lora_state["blk.lora_A.weight"], torch.full((2, 3), 3.0))


def test_prune_keeps_last_k_and_ignores_incomplete(tmp_path):
    _, opt, sched = _trained("adamw", steps=1)
    for step in range(1, 8):
        _save(tmp_path, step * 100, opt, sched, keep_last=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [500, 600, 700]
    assert ckpt.prune_checkpoints(tmp_path, 0) == []  # 0 = keep all
    removed = ckpt.prune_checkpoints(tmp_path, 1)
    assert [p.name for p in removed] == ["step-000500", "step-000600"]

    # A crashed save (temp folder) and a folder without its state file never count as checkpoints.
    (tmp_path / ".step-000800.tmp-1-abcd").mkdir()
    (tmp_path / "step-000900").mkdir()
    (tmp_path / "step-000900" / LORA_WEIGHTS_FILE).write_bytes(b"")
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step-000700"
    assert ckpt.find_latest_checkpoint(tmp_path / "nothing") is None
    _save(tmp_path, 1000, opt, sched)  # the next save sweeps stale temp folders
    assert not (tmp_path / ".step-000800.tmp-1-abcd").exists()


def test_resave_same_step_replaces(tmp_path):
    _, opt, sched = _trained("adamw", steps=1)
    _save(tmp_path, 5, opt, sched, extra={"v": 1})
    _save(tmp_path, 5, opt, sched, extra={"v": 2})
    assert ckpt.load_checkpoint(tmp_path / "step-000005", restore_rng=False).extra == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["step-000005"]


def test_load_errors_name_the_problem(tmp_path):
    _, opt, sched = _trained("adamw", steps=1)
    path = _save(tmp_path, 1, opt, sched, param_names=["a", "b"])
    _, prodigy, _ = _trained("prodigy", steps=0)
    with pytest.raises(UsageError, match="trained with AdamW"):
        ckpt.load_checkpoint(path, optimizer=prodigy, restore_rng=False)
    with pytest.raises(UsageError, match="LoRA tensors"):
        ckpt.load_checkpoint(path, optimizer=_trained("adamw", 0)[1], param_names=["a", "c"], restore_rng=False)
    (path / ckpt.STATE_TENSORS_FILE).write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="unreadable tensors"):
        ckpt.load_checkpoint(path, restore_rng=False)
    (path / ckpt.STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing training_state.json"):
        ckpt.load_checkpoint(path)


def test_changed_schedule_wins_on_resume(tmp_path, caplog):
    _, opt, sched = _trained("adamw", steps=2)
    path = _save(tmp_path, 2, opt, sched)
    _, opt2, _ = _trained("adamw", steps=0)
    longer = build_lr_scheduler(opt2, warmup_steps=1, max_steps=100, optimizer_name="adamw")
    ckpt.load_checkpoint(path, optimizer=opt2, scheduler=longer, restore_rng=False)
    assert "LR schedule changed" in caplog.text
    assert longer.last_epoch == 2 and longer.lr_lambdas[0].max_steps == 100
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert state["scheduler"]["lr_lambdas"] == [{"warmup_steps": 1, "max_steps": 10, "final_fraction": 0.0}]


def test_is_finite_state():
    assert ckpt.is_finite_state({"a": torch.ones(2), "ids": torch.arange(3)})
    assert not ckpt.is_finite_state({"a": torch.tensor([1.0, float("nan")])})
