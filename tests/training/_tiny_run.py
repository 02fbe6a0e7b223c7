"""A miniature training loop over the real checkpoint/optim/resume modules, run as a subprocess.

Used by test_checkpoint.py to kill a real process (SIGKILL) and resume it. The model is a tiny MLP
with a peft LoRA (dropout in the model and in the LoRA), each step draws torch, python and numpy
randomness, gradients are accumulated over 2 micro-batches and clipped, and the data order comes
from `EpochShuffleSampler`, so every piece of state a resume must restore is exercised.

    python _tiny_run.py --run adamw=OUT [--run prodigy=OUT2] [--resume]
                        [--hang_after_save N | --hang_in_save N]

`--hang_after_save N` prints `SAVED N` after step N's checkpoint and sleeps (to be killed);
`--hang_in_save N` prints `MIDSAVE N` halfway through writing step N's checkpoint and sleeps.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from torch.utils.data import DataLoader, TensorDataset

from acetune.training import checkpoint as ckpt
from acetune.training.optim import build_lr_scheduler, build_optimizer
from acetune.training.resume import (
    EpochShuffleSampler,
    batches_per_epoch,
    loader_generator,
    resume_position,
    seed_everything,
)

SEED = 1234
NUM_SAMPLES, BATCH, ACCUM = 10, 4, 2  # 3 micro-batches per epoch, so steps end mid-epoch
TOTAL_STEPS, EVERY, KEEP = 10, 2, 2
LR = {"adamw": 1e-2, "prodigy": 1.0}
LORA = {"r": 4, "lora_alpha": 1, "use_rslora": True, "lora_dropout": 0.1, "target_modules": ["0", "3"]}
WRAPPER = "base_model.model."


def _hang(marker: str) -> None:
    print(marker, flush=True)
    while True:
        time.sleep(60)


def _install_save_hang(step: int) -> None:
    """Stall inside save_checkpoint for `step`, after the LoRA file but before the rest."""
    real = ckpt._write_json
    prefix = f".{ckpt.checkpoint_name(step)}.tmp-"

    def slow_write_json(path, obj):
        if Path(path).parent.name.startswith(prefix):
            _hang(f"MIDSAVE {step}")
        real(path, obj)

    ckpt._write_json = slow_write_json


def _lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The final key layout: peft's adapter-free names without the `base_model.model.` wrapper."""
    return {k.removeprefix(WRAPPER): v for k, v in get_peft_model_state_dict(model).items()}


def _lora_to_model(model: torch.nn.Module, lora_state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in lora_state.items():  # "3.lora_A.weight" -> "base_model.model.3.lora_A.default.weight"
            module, kind, _ = key.rsplit(".", 2)
            params[f"{WRAPPER}{module}.{kind}.default.weight"].copy_(value)


def train(optimizer_name: str, out: Path, resume: bool, hang_after_save: int | None) -> None:
    seed_everything(SEED)
    base = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 6)
    )
    model = get_peft_model(base, LoraConfig(**LORA))
    model.train()
    data = torch.Generator().manual_seed(7)
    dataset = TensorDataset(torch.randn(NUM_SAMPLES, 6, generator=data), torch.randn(NUM_SAMPLES, 6, generator=data))
    sampler = EpochShuffleSampler(NUM_SAMPLES, SEED)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, generator=loader_generator(SEED))

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    optimizer = build_optimizer(params, optimizer_name, lr=LR[optimizer_name])
    scheduler = build_lr_scheduler(optimizer, warmup_steps=2, max_steps=TOTAL_STEPS, optimizer_name=optimizer_name)
    config = {"optimizer": optimizer_name, "seed": SEED, "max_steps": TOTAL_STEPS, "lora": LORA}

    step = micro = 0
    latest = ckpt.find_latest_checkpoint(out) if resume else None
    if latest is not None:
        loaded = ckpt.load_checkpoint(latest, optimizer=optimizer, scheduler=scheduler, param_names=names)
        _lora_to_model(model, loaded.lora_state)
        step, micro = loaded.step, loaded.extra["micro_batches"]
        print(f"RESUMED {step}", flush=True)

    per_epoch = batches_per_epoch(NUM_SAMPLES, BATCH)
    while step < TOTAL_STEPS:
        epoch, done = resume_position(micro, per_epoch)
        sampler.set_epoch(epoch)
        sampler.skip(done * BATCH)
        for x, y in loader:
            noise = torch.randn_like(x) * 0.1  # torch CPU RNG
            scale = 1.0 + 0.5 * (random.random() < 0.5) + float(np.random.uniform(0, 0.1))  # python + numpy RNG
            loss = torch.nn.functional.mse_loss(model(x + noise) * scale, y) / ACCUM
            loss.backward()
            micro += 1
            if micro % ACCUM:
                continue
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % EVERY == 0:
                ckpt.save_checkpoint(
                    out, step, lora_state=_lora_state(model), adapter_config=LORA,
                    optimizer=optimizer, scheduler=scheduler, config=config, epoch=epoch,
                    extra={"micro_batches": micro}, param_names=names, keep_last=KEEP,
                )
                if step == hang_after_save:
                    _hang(f"SAVED {step}")
            if step >= TOTAL_STEPS:
                break
    print(f"DONE {step}", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", action="append", required=True, help="OPTIMIZER=OUT_DIR")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang_after_save", type=int)
    parser.add_argument("--hang_in_save", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.hang_in_save:
        _install_save_hang(args.hang_in_save)
    for run in args.run:
        name, out = run.split("=", 1)
        train(name, Path(out), args.resume, args.hang_after_save)


if __name__ == "__main__":
    main(sys.argv[1:])
