"""The training loop: one `fit()` that reads top to bottom.

batch -> autocast forward (the family's `training_loss`) -> backward (accumulated) -> clip -> step
-> log -> maybe checkpoint / validate. `stages/train.py` builds a `TrainRun` (model with LoRA,
dataset, optimizer, schedule, logger) and hands it here; `overfit_check()` is the same step on one
sample with fixed noise, to prove the setup can learn at all.

Distributed: the step module is wrapped by accelerate (DDP when launched with several processes,
gloo on CPU). Each rank reads every `world`-th sample (`EpochShuffleSampler`); only rank 0 logs,
saves and validates. A resume is bitwise exact in one process (rank 0's RNG is what is saved).
FSDP (`--full` under an FSDP accelerate config): the model comes sharded from `training/sharding.py`;
every rank joins each checkpoint save (the gather is a collective), rank 0 writes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acetune.errors import TrainingError
from acetune.progress import progress
from acetune.stopping import stop_requested
from acetune.training import checkpoint as ckpt
from acetune.training.best import read_best
from acetune.training.data import ConditionDropout, LyricCache, SongDataset, batch_to, make_batch
from acetune.training.lean_grads import Bf16Grads, bf16_grads, lean_params
from acetune.training.loggers import MetricsLogger
from acetune.training.lora import LoraSetup, lora_input_casting
from acetune.training.resume import (
    EpochShuffleSampler,
    batches_per_epoch,
    loader_generator,
    resume_position,
)
from acetune.training.val_loss import track_validation_loss

logger = logging.getLogger(__name__)

OVERFIT_LR = 1e-3  # constant LR of `overfit_check` (AdamW, no warmup)
OVERFIT_MAX_STEPS = 300
OVERFIT_FACTOR = 10.0  # the check passes when the loss falls by this factor


@dataclass
class LoopConfig:
    """The loop's knobs (a subset of `stages.train.Args`, already validated there)."""

    output_dir: Path
    max_steps: int = 10000
    epochs: int = -1  # -1: stop at max_steps only
    batch_size: int = 1
    num_workers: int = 0
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0  # 0 disables clipping
    shift: float = 3.0
    ssl_coeff: float = 1.0
    every_n_train_steps: int = 100
    save_last: int = 5
    seed: int = 42
    dropout: ConditionDropout = field(default_factory=ConditionDropout)
    compute_dtype: torch.dtype = torch.bfloat16  # inputs and base weights; float32 for --precision 32
    autocast: bool = True
    resume_from: Path | None = None  # a checkpoint folder
    validation: object | None = None  # training.validation.ValidationSpec
    validation_parts: dict | None = None  # V1Generator arguments (checkpoint_dir, ...)
    val_loss: object | None = None  # training.val_loss.ValLossSpec: held-out loss + best checkpoint
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class TrainRun:
    """Everything `fit` needs, built by `stages.train`."""

    model: torch.nn.Module  # the transformer with the LoRA adapter
    family: object  # models.family.ModelFamily
    setup: LoraSetup
    dataset: SongDataset
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: object  # accelerate.Accelerator
    config: LoopConfig
    metrics: MetricsLogger = field(default_factory=MetricsLogger)
    lyric_cache: LyricCache | None = None
    train_config: dict = field(default_factory=dict)  # the resolved flags, written into every checkpoint
    checkpoint_dir: Path | None = None  # the model folder (a Hub id already resolved to the cache)
    echo: Callable[[str], None] = print
    summary: list[str] = field(default_factory=list)  # extra start-summary lines (memory plan)


class StepModule(torch.nn.Module):
    """The model plus the family's loss, so DDP sees one `forward` per micro-batch."""

    def __init__(self, model: torch.nn.Module, family, shift: float, ssl_coeff: float):
        super().__init__()
        self.model, self.family, self.shift, self.ssl_coeff = model, family, shift, ssl_coeff

    def forward(self, batch: dict, noise=None, u=None) -> dict[str, torch.Tensor]:
        terms = self.family.training_loss(self.model, batch, shift=self.shift, ssl_coeff=self.ssl_coeff,
                                          noise=noise, u=u)
        return {"loss": terms.loss, "denoising_loss": terms.denoising_loss,
                **{f"{k}_loss": v for k, v in terms.proj_losses.items()}}


# ---------------------------------------------------------------------------------------------
# Side jobs
# ---------------------------------------------------------------------------------------------


def _sharded(run: TrainRun) -> bool:
    """FSDP (`training/sharding.py`): saving gathers shards, so every rank takes part in it."""
    return getattr(run.setup, "sharded", False)


def save_checkpoint(run: TrainRun, step: int, epoch: int, micro: int) -> Path | None:
    """Write `step-NNNNNN/` (LoRA, optimizer, schedule, RNG, loop position), keep the last `save_last`.
    Sharded: call on every rank (the gather is a collective); rank 0 writes, the others get None."""
    acc = run.accelerator
    world = acc.num_processes
    # samples seen by all ranks: a resume with another number of processes finds its place from it
    extra = {"micro_batches": micro, "samples_seen": micro * run.config.batch_size * world}
    lora_state = run.setup.lora_state(run.model)
    optimizer_state = run.setup.optimizer_state(run.model, run.optimizer) if _sharded(run) else None
    if not acc.is_main_process:
        return None
    if run.setup.embedder_names:
        extra["lyrics_embedder"] = run.setup.embedder_state(run.model)
    return ckpt.save_checkpoint(
        run.config.output_dir, step, lora_state=lora_state, adapter_config=run.setup.config,
        optimizer=run.optimizer, scheduler=run.scheduler, config=run.train_config, epoch=epoch, extra=extra,
        param_names=run.setup.names, keep_last=run.config.save_last,
        weights_file=getattr(run.setup, "weights_file", ckpt.LORA_WEIGHTS_FILE), optimizer_state=optimizer_state,
    )


def restore_checkpoint(run: TrainRun, path: Path) -> tuple[int, int]:
    """Load a checkpoint into the run (weights, optimizer, schedule, RNG); returns (step, micro-batches)."""
    load_optimizer = (functools.partial(run.setup.load_optimizer_state, run.model, run.optimizer)
                      if _sharded(run) else None)
    loaded = ckpt.load_checkpoint(path, optimizer=run.optimizer, scheduler=run.scheduler,
                                  param_names=run.setup.names, load_optimizer=load_optimizer)
    run.setup.load_lora_state(run.model, loaded.lora_state)
    if run.setup.embedder_names:
        run.setup.load_embedder_state(run.model, loaded.extra["lyrics_embedder"])
    micro = int(loaded.extra["micro_batches"])
    per_micro = run.config.batch_size * run.accelerator.num_processes
    if "samples_seen" in loaded.extra and int(loaded.extra["samples_seen"]) % per_micro == 0:
        micro = int(loaded.extra["samples_seen"]) // per_micro  # saved by another number of processes
    return loaded.step, micro


def validate(run: TrainRun, step: int) -> None:
    """Render the validation prompts with the current LoRA (eval mode, no grad, RNG untouched)."""
    from acetune.training.validation import render_validation

    was_training = run.model.training
    run.model.eval()
    try:
        with torch.no_grad(), lora_input_casting(run.model, True):  # renders run without autocast
            render_validation({**(run.config.validation_parts or {}), "transformer": run.model},
                              run.config.validation, step, run.config.output_dir, logger=run.metrics)
    finally:
        run.model.train(was_training)


def _all_finite(value: torch.Tensor, world: int) -> bool:
    flag = torch.isfinite(value.detach()).all().float()  # .item() below: a device-to-host sync
    if world > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def _stop_everywhere(world: int, device: torch.device) -> bool:
    """True when any rank got Ctrl-C/SIGTERM (all ranks then stop at the same step)."""
    if world == 1:
        return stop_requested()
    flag = torch.tensor([float(stop_requested())], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _any_rank(flag: bool, device: torch.device) -> bool:
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _check_replicas(run: TrainRun, world: int) -> bool:
    """True when every rank holds the same LoRA weights (DDP kept them in sync)."""
    if world == 1 or _sharded(run):  # FSDP: one sharded copy, nothing to drift apart
        return True
    total = torch.stack([p.detach().double().sum() for p in run.setup.params]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(world)]
    torch.distributed.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def fit(run: TrainRun) -> dict:
    """Train until `max_steps` (or `epochs`); returns the summary dict. Raises TrainingError on a
    non-finite loss (the newest checkpoint is the last good one; nothing is saved after it)."""
    cfg = run.config
    lean = lean_params(run.setup, autocast=cfg.autocast, compute_dtype=cfg.compute_dtype,
                       accumulate=cfg.accumulate_grad_batches, processes=run.accelerator.num_processes)
    with lora_input_casting(run.model, enabled=not cfg.autocast), bf16_grads(lean) as grads:  # both lossless
        return _fit(run, grads)


def _fit(run: TrainRun, grads: Bf16Grads) -> dict:
    cfg, acc = run.config, run.accelerator
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    device = cfg.device
    step_module = StepModule(run.model, run.family, cfg.shift, cfg.ssl_coeff)
    sharded = _sharded(run)  # FSDP: the model is sharded already (setup), nothing to wrap
    if world > 1 and not sharded:  # DDP (gloo on CPU, NCCL on GPUs); the model is already on its device
        step_module = acc.prepare_model(step_module, device_placement=False)
    ssl_names = run.dataset.ssl_names if cfg.ssl_coeff > 0 else ()

    step = micro = 0
    if cfg.resume_from is not None:
        step, micro = restore_checkpoint(run, cfg.resume_from)
        run.echo(f"resumed from {cfg.resume_from} at step {step}")
    sampler = EpochShuffleSampler(len(run.dataset), cfg.seed, num_replicas=world, rank=rank)
    loader = torch.utils.data.DataLoader(run.dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=list, num_workers=cfg.num_workers,
                                         generator=loader_generator(cfg.seed))
    per_epoch = batches_per_epoch(len(sampler.epoch_indices(0)), cfg.batch_size)
    accum = cfg.accumulate_grad_batches

    if cfg.validation is not None and step == 0 and main:
        validate(run, 0)
    if cfg.val_loss is not None and step == 0 and main:
        track_validation_loss(run, 0, save=lambda: None)
    bar = progress(total=cfg.max_steps, initial=step, desc="train", unit="step", **({} if main else {"disable": True}))
    last_saved = ckpt.find_latest_checkpoint(cfg.output_dir) if main else None
    window: list[dict[str, torch.Tensor]] = []
    started, first_loss, last_loss, steps_run = time.perf_counter(), None, None, 0
    run.model.train()
    epoch = resume_position(micro, per_epoch)[0]
    while step < cfg.max_steps and (cfg.epochs < 0 or epoch < cfg.epochs):
        epoch, done = resume_position(micro, per_epoch)
        if cfg.epochs >= 0 and epoch >= cfg.epochs:
            break
        sampler.set_epoch(epoch)
        sampler.skip(done * cfg.batch_size)
        for samples in loader:
            # 1. batch (random prompt variant and condition dropout drawn here, on the main process)
            batch = batch_to(make_batch(samples, dropout=cfg.dropout, lyric_cache=run.lyric_cache,
                                        ssl_names=ssl_names), device, cfg.compute_dtype)
            syncing = (micro + 1) % accum == 0
            # 2. forward under autocast, backward; gradients are all-reduced only on the last micro-batch
            no_sync = step_module.no_sync() if world > 1 and not syncing and not sharded else contextlib.nullcontext()
            with no_sync:
                with torch.autocast(device.type, dtype=cfg.compute_dtype, enabled=cfg.autocast):
                    terms = step_module(batch)
                (terms["loss"] / accum).backward()
            micro += 1
            if not _all_finite(terms["loss"], world):
                raise TrainingError(
                    f"loss became {terms['loss'].item()} at step {step + 1} (the model probably diverged); "
                    + (f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was saved yet"),
                    fix="resume from it with a lower --learning_rate (or --precision 32 to rule out bf16 overflow)")
            window.append({k: v.detach() for k, v in terms.items()})
            if not syncing:
                continue
            # 3. clip, optimizer step, LR schedule step
            grads.restore()  # the fp32 gradients, as autograd left them
            grad_norm = None
            if cfg.gradient_clip_val > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(run.setup.params, cfg.gradient_clip_val)
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_run += 1
            # 4. log the mean over the accumulation window (.item(): one sync per optimizer step)
            names = [k for k in window[0] if all(k in w for w in window)]  # an SSL term may be absent in a batch
            metrics = {f"train/{k}": torch.stack([w[k] for w in window]).float().mean().item() for k in names}
            window.clear()
            metrics["train/learning_rate"] = run.scheduler.get_last_lr()[0]
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            first_loss = metrics["train/loss"] if first_loss is None else first_loss
            last_loss = metrics["train/loss"]
            if main:
                run.metrics.log(metrics, step)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{metrics['train/learning_rate']:.2e}", refresh=False)
            bar.update(1)
            # 5. maybe checkpoint / validate
            if (main or sharded) and (step % cfg.every_n_train_steps == 0 or step == cfg.max_steps):
                last_saved = save_checkpoint(run, step, epoch, micro)
            if main and cfg.val_loss is not None and cfg.val_loss.due(step, cfg.max_steps):
                last_saved = track_validation_loss(
                    run, step, save=functools.partial(save_checkpoint, run, step, epoch, micro)) or last_saved
            if main and cfg.validation is not None and cfg.validation.due(step):
                validate(run, step)
            if step >= cfg.max_steps or _stop_everywhere(world, device):  # Ctrl-C / SIGTERM: saved just below
                break
        else:
            continue  # epoch finished: next epoch
        break
    bar.close()
    unsaved = main and step > 0 and (last_saved is None or ckpt.list_checkpoints(cfg.output_dir)[-1][0] != step)
    if sharded:  # every rank joins the gather when rank 0 decides to save
        unsaved = _any_rank(unsaved, device)
    if unsaved:
        last_saved = save_checkpoint(run, step, epoch, micro)  # stopped by --epochs or a signal off a save point
    in_sync = _check_replicas(run, world)
    elapsed = time.perf_counter() - started
    return {
        "steps": step, "steps_this_run": steps_run, "epochs_done": micro / per_epoch,
        "first_loss": first_loss, "last_loss": last_loss, "seconds": elapsed,
        "seconds_per_step": elapsed / max(1, steps_run), "checkpoint": str(last_saved) if last_saved else None,
        "processes": world, "replicas_in_sync": in_sync, "stopped": stop_requested(),
        "best": read_best(cfg.output_dir) if main else None,
    }


# ---------------------------------------------------------------------------------------------
# Overfit check
# ---------------------------------------------------------------------------------------------


def overfit_check(run: TrainRun, max_steps: int = OVERFIT_MAX_STEPS, factor: float = OVERFIT_FACTOR,
                  lr: float = OVERFIT_LR) -> dict:
    """Train on the first sample alone with one fixed noise draw and timestep until the denoising loss
    falls by `factor` (or `max_steps`). Condition dropout off, prompt variant 0, constant-LR AdamW.

    A setup that cannot do this (frozen LoRA, broken data, wrong loss) cannot learn a style either.
    Returns {"passed", "first", "last", "ratio", "steps"}.
    """
    with lora_input_casting(run.model, enabled=not run.config.autocast):
        return _overfit_check(run, max_steps, factor, lr)


def _overfit_check(run: TrainRun, max_steps: int, factor: float, lr: float) -> dict:
    cfg, device = run.config, run.config.device
    sample = run.dataset[0]
    ssl_names = run.dataset.ssl_names if cfg.ssl_coeff > 0 else ()
    batch = batch_to(make_batch([sample], variant=0, lyric_cache=run.lyric_cache, ssl_names=ssl_names),
                     device, cfg.compute_dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(batch["target_latents"].shape, generator=gen).to(batch["target_latents"])
    u = torch.zeros(1)  # the median timestep (index 500, sigma 0.75)
    optimizer = torch.optim.AdamW(run.setup.params, lr=lr, weight_decay=0.0)
    step_module = StepModule(run.model, run.family, cfg.shift, cfg.ssl_coeff)
    run.model.train()
    first = last = None
    bar = progress(total=max_steps, desc="overfit check", unit="step")
    steps = 0
    for _ in range(max_steps):
        steps += 1
        with torch.autocast(device.type, dtype=cfg.compute_dtype, enabled=cfg.autocast):
            terms = step_module(batch, noise=noise, u=u)
        terms["loss"].backward()
        if cfg.gradient_clip_val > 0:
            torch.nn.utils.clip_grad_norm_(run.setup.params, cfg.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = terms["denoising_loss"].item()
        if not math.isfinite(value):
            break
        first = value if first is None else first
        last = value
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if last * factor <= first:
            break
    bar.close()
    ratio = (first / last) if first is not None and last else float("nan")
    return {"passed": bool(ratio >= factor), "first": first, "last": last, "ratio": ratio, "steps": steps}
