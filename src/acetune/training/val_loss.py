"""Held-out validation loss: the denoising loss on songs the LoRA never trains on, deterministic.

The per-step training loss draws a random timestep and random noise, so single values swing by
several times; it cannot say whether the LoRA still generalises. This loss is measured on held-out
songs (`--validation_split` of the dataset, whole songs, seeded; or `--validation_dataset`), with:

- a fixed set of timesteps spanning the schedule: `u = logit(q)` for the quantiles `VAL_QUANTILES`,
  passed as the family's pinned logit-normal draw (`ModelFamily.training_loss(..., u=...)`), so v1
  and 1.5 share this code (v1: schedule indices 100..900; 1.5: t = 3q / (1 + 2q), 0.25..0.96);
- fixed noise: one CPU generator seeded with `--validation_seed`, drawn in song-then-timestep order;
- prompt variant 0, no condition dropout, no SSL term, the model in eval mode (LoRA dropout off).

Every forward has the same shapes and order in every evaluation, so two evaluations of the same
weights give the same float to the last bit on CPU. The global RNG is left untouched (a run with a
validation loss resumes exactly like one without).

The best checkpoint by this loss is protected from rotation (`training/best.py`); a new best at
a step without a checkpoint gets one saved.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acetune.dataset import schema
from acetune.errors import UsageError
from acetune.training import best as best_record
from acetune.training import checkpoint as ckpt
from acetune.training.data import SongDataset, batch_to, make_batch

logger = logging.getLogger(__name__)

VAL_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)  # where in the timestep distribution the loss is measured
METRIC = "val/loss"


def split_songs(rows, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train row indices, held-out row indices): whole songs (all windows of one `source_path`) are held out.

    At least one song is held out and at least one kept; the choice depends only on the songs and `seed`.
    """
    paths = list(rows[schema.SOURCE_PATH])
    songs = sorted(set(paths))
    if len(songs) < 2:
        raise UsageError(f"--validation_split needs at least 2 songs, the dataset has {len(songs)}",
                         fix="add songs, or pass a separate --validation_dataset")
    count = min(len(songs) - 1, max(1, round(fraction * len(songs))))
    held = set(random.Random(seed).sample(songs, count))
    train = [i for i, p in enumerate(paths) if p not in held]
    val = [i for i, p in enumerate(paths) if p in held]
    return train, val


@dataclass
class ValLossSpec:
    """The held-out songs and when to measure.

    Args:
        dataset: the held-out songs (a `SongDataset`, SSL off).
        every: measure every this many optimizer steps (0: at every checkpoint save); always at step 0
            (before training) and at the last step.
        seed: seed of the fixed noise.
        quantiles: timestep quantiles (see `VAL_QUANTILES`).
    """

    dataset: SongDataset
    every: int = 0
    seed: int = 42
    quantiles: tuple[float, ...] = VAL_QUANTILES
    save_every: int = field(default=100, repr=False)  # the run's --every_n_train_steps, for every == 0
    lyric_cache: object | None = field(default=None, repr=False)  # data.LyricCache of these songs (own keys)

    def due(self, step: int, max_steps: int) -> bool:
        period = self.every or self.save_every
        return step == 0 or step == max_steps or step % period == 0

    def u_values(self) -> list[torch.Tensor]:
        return [torch.full((1,), math.log(q / (1.0 - q))) for q in self.quantiles]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, family, spec: ValLossSpec, *, shift: float = 3.0,
                    device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32,
                    autocast: bool = False, lyric_cache=None) -> float:
    """Mean denoising loss over every held-out song x every timestep of `spec` (a Python float).

    Sums in float64 in a fixed order; the model is put in eval mode and restored.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.random.fork_rng(devices=[]):
            gen = torch.Generator().manual_seed(spec.seed)
            for i in range(len(spec.dataset)):
                batch = batch_to(make_batch([spec.dataset[i]], variant=0, lyric_cache=lyric_cache),
                                 device, compute_dtype)
                x0 = batch["target_latents"]
                for u in spec.u_values():
                    noise = torch.randn(x0.shape, generator=gen).to(x0)
                    with torch.autocast(device.type, dtype=compute_dtype, enabled=autocast):
                        terms = family.training_loss(model, batch, shift=shift, ssl_coeff=0.0, noise=noise, u=u)
                    total += float(terms.denoising_loss.detach().double().item())
                    count += 1
    finally:
        model.train(was_training)
    return total / max(1, count)


def track_validation_loss(run, step: int, save: Callable[[], Path]) -> Path | None:
    """Measure the loss for the trainer at `step`, log it, and keep the best checkpoint.

    `save` writes this step's checkpoint (called when the step is a new best and was not saved yet).
    Returns the path `save` wrote, or None.
    """
    cfg = run.config
    value = validation_loss(run.model, run.family, cfg.val_loss, shift=cfg.shift, device=cfg.device,
                            compute_dtype=cfg.compute_dtype, autocast=cfg.autocast,
                            lyric_cache=cfg.val_loss.lyric_cache)
    run.metrics.log({METRIC: value}, step)
    best = best_record.read_best(cfg.output_dir)
    if step == 0:
        best_record.write_best(cfg.output_dir, None, None, step0_val_loss=value)
        return None
    if not math.isfinite(value) or (best and best.get("step") is not None and value >= best["val_loss"]):
        return None
    saved = None
    if not (Path(cfg.output_dir) / ckpt.checkpoint_name(step) / ckpt.STATE_FILE).is_file():
        saved = save()
    best_record.write_best(cfg.output_dir, step, value, step0_val_loss=(best or {}).get("step0_val_loss"))
    ckpt.prune_checkpoints(cfg.output_dir, cfg.save_last)  # the previous best may rotate out now
    logger.info("step %d: new best validation loss %.6f", step, value)
    return saved


def held_out_songs(rows, meta, *, split: float, dataset_path: str, every: int, seed: int, save_every: int,
                   check: Callable[[object, str], None]):
    """(training rows, `ValLossSpec` or None) for `--validation_split` / `--validation_dataset`.

    `check(meta, path)` refuses a validation dataset made for another model (the train stage's check).
    """
    if split:
        train_rows, val_rows = split_songs(rows, split, seed)
        held, val_meta, rows = rows.select(val_rows), meta, rows.select(train_rows)
    elif dataset_path:
        held, val_meta = schema.load_dataset(dataset_path)
        check(val_meta, dataset_path)
    else:
        return rows, None
    spec = ValLossSpec(SongDataset(held, val_meta, use_ssl=False), every=every, seed=seed, save_every=save_every)
    return rows, spec


def best_lines(best: dict | None, output_dir: str | Path) -> list[str]:
    """The summary lines naming the best checkpoint (none when no validation loss was measured)."""
    if not best:
        return []
    start = best.get("step0_val_loss")
    start_text = f"; step 0: {start:.6f}" if start is not None else ""
    if best.get("step") is None:
        return [f"validation loss: no checkpoint beat step 0{start_text} (see docs/evaluate.md)"]
    path = Path(output_dir) / ckpt.checkpoint_name(best["step"])
    return [f"best checkpoint (validation loss {best['val_loss']:.6f}{start_text}): {path}"]
