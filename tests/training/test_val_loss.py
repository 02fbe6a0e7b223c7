"""Held-out validation loss: bit-identical across evaluations (v1 here, 1.5 in tests/models/v15/test_val_loss_v15.py), whole-song splits, and the best
checkpoint kept through rotation (unit, with a scripted loss, and end to end through `acetune train`)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from acetune.cli import parse_args, run_command
from acetune.training import best as best_record
from acetune.training import checkpoint as ckpt
from acetune.training.loggers import read_metrics
from acetune.training.val_loss import VAL_QUANTILES, split_songs, track_validation_loss, validation_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fixtures import make_checkpoint, make_dataset, train_argv  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("valloss")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint, songs=4, frames=(24, 17, 30, 21))


def _build(argv):
    from acetune.stages import train
    from acetune.training.setup import build_run

    return build_run(parse_args(train.Args, argv, "acetune train"), echo=lambda _: None)[0]


def _loss(run_) -> float:
    cfg = run_.config
    return validation_loss(run_.model, run_.family, cfg.val_loss, shift=cfg.shift, device=cfg.device,
                           compute_dtype=cfg.compute_dtype, autocast=cfg.autocast, lyric_cache=cfg.val_loss.lyric_cache)


def test_split_holds_out_whole_songs_by_seed():
    rows = {"source_path": ["a.wav", "a.wav", "b.wav", "c.wav", "c.wav", "d.wav", "e.wav", "f.wav", "g.wav",
                            "h.wav", "i.wav", "j.wav"]}
    train, val = split_songs(rows, 0.1, seed=3)
    assert sorted(train + val) == list(range(12)) and not set(train) & set(val)
    held = {rows["source_path"][i] for i in val}
    assert len(held) == 1 and not held & {rows["source_path"][i] for i in train}  # 10 songs x 0.1: one, whole
    assert split_songs(rows, 0.1, seed=3) == (train, val)
    assert any(split_songs(rows, 0.1, seed=s)[1] != val for s in range(4, 10))  # the seed chooses
    assert len({rows["source_path"][i] for i in split_songs(rows, 0.99, seed=0)[0]}) == 1  # one song always trains


def test_v1_validation_loss_is_bitwise_deterministic(tiny, tmp_path):
    checkpoint, data = tiny
    run_ = _build(train_argv(data, checkpoint, tmp_path / "out", "--validation_split", "0.25", "--seed", "5"))
    assert len(run_.dataset) == 3 and len(run_.config.val_loss.dataset) == 1
    state = torch.random.get_rng_state()
    first, second = _loss(run_), _loss(run_)
    assert first == second and math.isfinite(first) and first > 0  # to the last bit
    assert torch.equal(torch.random.get_rng_state(), state)  # the training RNG is untouched
    assert run_.model.training  # eval mode only inside
    with torch.no_grad():  # the number depends on the LoRA: move B off zero
        for name, p in run_.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    assert _loss(run_) != first


class _ScriptedFamily:
    """training_loss returns the next scripted value per call (one value per evaluation of one song)."""

    def __init__(self, values):
        self.values = iter(values)

    def training_loss(self, model, batch, **_):
        value = torch.tensor(next(self.values), dtype=torch.float64)
        return type("Terms", (), {"denoising_loss": value})()


class _OneSong:
    def __len__(self):
        return 1

    def __getitem__(self, i):
        from acetune.training.data import Sample

        return Sample("k", torch.zeros(8, 16, 4), torch.zeros(1, 2, 3), torch.ones(1, 2), torch.zeros(1, dtype=torch.long),
                      torch.zeros(1), torch.zeros(2))


def test_best_checkpoint_survives_rotation(tmp_path):
    """save_last 2, a checkpoint every 2 steps, validation every step: the best (step 3, no scheduled save)
    gets saved and outlives three rotations; the summary names it."""
    from types import SimpleNamespace

    from acetune.training.loggers import JsonlLogger
    from acetune.training.val_loss import ValLossSpec, best_lines

    losses = {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.3, 4: 0.5, 5: 0.4, 6: 0.35, 7: 0.6, 8: 0.31}
    spec = ValLossSpec(dataset=_OneSong(), every=1, seed=0, quantiles=(0.5,))
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.AdamW(model.parameters())
    metrics = JsonlLogger(tmp_path)
    run_ = SimpleNamespace(model=model, family=_ScriptedFamily([losses[s] for s in sorted(losses)]), metrics=metrics,
                           config=SimpleNamespace(output_dir=tmp_path, shift=3.0, device=torch.device("cpu"),
                                                  compute_dtype=torch.float32, autocast=False, val_loss=spec,
                                                  save_last=2))

    def save(step):
        return ckpt.save_checkpoint(tmp_path, step, lora_state={"w": model.weight.detach()}, adapter_config={},
                                    optimizer=opt, keep_last=2)

    for step in sorted(losses):
        if step and step % 2 == 0:
            save(step)
        track_validation_loss(run_, step, save=lambda s=step: save(s))
    metrics.close()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 6, 8]  # best 3 + the newest two
    assert best_record.read_best(tmp_path) == {"step": 3, "val_loss": 0.3, "step0_val_loss": 1.0}
    assert [r["val/loss"] for r in read_metrics(tmp_path)] == [losses[s] for s in sorted(losses)]
    (line,) = best_lines(best_record.read_best(tmp_path), tmp_path)
    assert "0.300000" in line and "step 0: 1.000000" in line and line.endswith(str(tmp_path / "step-000003"))
    best_record.forget_best_after(tmp_path, 2)  # resuming from step 2: the record of step 3 is void
    assert best_record.read_best(tmp_path)["step"] is None
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]


def test_train_logs_validation_loss_and_keeps_the_best(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    out = tmp_path / "out"
    code = run_command("train", train_argv(data, checkpoint, out, "--validation_split", "0.25", "--max_steps", "4",
                                           "--every_n_train_steps", "2", "--save_last", "1", "--validation_every", "1"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    val = {r["step"]: r["val/loss"] for r in read_metrics(out) if "val/loss" in r}
    assert sorted(val) == [0, 1, 2, 3, 4] and all(math.isfinite(v) for v in val.values())
    best = best_record.read_best(out)
    assert best["step0_val_loss"] == val[0]
    later = {s: v for s, v in val.items() if s}
    if min(later.values()) < val[0]:
        step = min(later, key=later.get)
        assert best == {"step": step, "val_loss": later[step], "step0_val_loss": val[0]}
        assert {s for s, _ in ckpt.list_checkpoints(out)} == {step, 4}
        assert f"best checkpoint (validation loss {later[step]:.6f}" in printed
    else:
        assert best["step"] is None and "no checkpoint beat step 0" in printed
    assert "validation loss: 1 held-out sample(s) x 5 timesteps, every 1 steps" in printed
    assert len(VAL_QUANTILES) == 5
    config = json.loads((out / "step-000004" / ckpt.TRAIN_CONFIG_FILE).read_text())
    assert config["validation_split"] == 0.25


def test_the_fixed_timesteps_span_both_schedules():
    """u = logit(q): v1 schedule indices 100..900 (sigma from high to low noise); 1.5 t = 3q / (1 + 2q)."""
    from acetune.models.v1.flow import timestep_indices_from_u
    from acetune.models.v15.objective import timestep_from_normal
    from acetune.training.val_loss import ValLossSpec

    u = torch.cat(ValLossSpec(dataset=None).u_values())
    assert timestep_indices_from_u(u).tolist() == [100, 300, 500, 700, 900]
    expected = [3 * q / (1 + 2 * q) for q in VAL_QUANTILES]  # 0.25 ... 0.96
    assert torch.allclose(timestep_from_normal(u), torch.tensor(expected), atol=1e-6)
