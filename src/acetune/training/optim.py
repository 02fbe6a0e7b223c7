"""Optimizer and learning-rate schedule, as the woct0rdho fork's `trainer_new.py` builds them.

Mirrors `Pipeline.configure_optimizers` in the fork:

- AdamW(lr, weight_decay, betas=(0.8, 0.9)); the LR decays linearly to 0 at `max_steps`.
- Prodigy(lr, weight_decay, use_bias_correction=True, safeguard_warmup=True) with Prodigy's own
  betas (0.9, 0.999); the LR decays linearly to 0.1 x lr at `max_steps` (the fork's
  `lr_multiplier_final`).
- Both under a `LambdaLR` stepped once per optimizer step: multiplier step/warmup during warmup
  (0 at step 0), then 1 -> final fraction linearly, flat after `max_steps`.

The upstream ACE-Step `trainer.py` has the same rule with AdamW only (final fraction 0).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from acetune.errors import UsageError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")

# betas of the fork's (and upstream's) AdamW; Prodigy keeps its library default.
ADAMW_BETAS = (0.8, 0.9)
# LR multiplier reached at max_steps (fork `lr_multiplier_final`).
FINAL_LR_FRACTION = {"adamw": 0.0, "adamw8bit": 0.0, "prodigy": 0.1, "adafactor": 0.0}


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    name: str = "adamw",
    *,
    lr: float = 1e-4,
    weight_decay: float = 1e-2,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    use_bias_correction: bool = True,
    safeguard_warmup: bool = True,
    offload: bool = False,
) -> torch.optim.Optimizer:
    """The fork's optimizer for the trainable (LoRA) parameters.

    Args:
        params: trainable parameters (or param-group dicts). Their order fixes the integer ids in
            the optimizer state, so pass them in a deterministic order (`named_parameters()`).
        name: "adamw" or "prodigy".
        lr: base learning rate (fork default 1e-4; with Prodigy it is a multiplier on the
            estimated step size d and is usually 1.0).
        weight_decay: decoupled weight decay (fork default 1e-2, both optimizers).
        betas: None = per-optimizer default: (0.8, 0.9) for AdamW as the fork, Prodigy's own
            (0.9, 0.999) for Prodigy (the fork does not pass betas to Prodigy).
        eps: None = the library default (1e-8 for both).
        use_bias_correction, safeguard_warmup: Prodigy only; the fork sets both True.
        offload: keep the state and the step in host RAM (`optim_memory.OffloadedOptimizer`).
    """
    params = list(params)
    if not params:
        raise UsageError("no trainable parameters to optimize", fix="check the LoRA target_modules in the LoRA config")
    if offload:
        from acetune.training.optim_memory import offloaded

        return offloaded(params, lambda host: build_optimizer(
            host, name, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
            use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup))
    if name == "adamw8bit":
        from acetune.training.optim_memory import adamw8bit

        return adamw8bit(params, lr=lr, weight_decay=weight_decay, betas=betas or ADAMW_BETAS, eps=eps)
    if name == "adamw":
        # foreach: the multi-tensor step, bit-identical to the per-tensor loop torch picks on the CPU and ~5x faster
        # there for a LoRA's ~100-400 small tensors (the default on CUDA already; tests/training/test_optim.py)
        kw = {"eps": eps} if eps is not None else {}
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas or ADAMW_BETAS),
                                 foreach=True, **kw)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as err:
            raise UsageError(
                "--optimizer prodigy needs the prodigyopt package", fix="pip install prodigyopt"
            ) from err
        kw = {"betas": tuple(betas)} if betas is not None else {}
        if eps is not None:
            kw["eps"] = eps
        return Prodigy(
            params,
            lr=lr,
            weight_decay=weight_decay,
            use_bias_correction=use_bias_correction,
            safeguard_warmup=safeguard_warmup,
            **kw,
        )
    if name == "adafactor":  # factored second moments, no first moment: for full fine-tunes (`train --full`)
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise UsageError(f"unknown optimizer {name!r}", fix=f"use --optimizer {' or '.join(OPTIMIZERS)}")


def optimizer_advice(name: str, lr: float, warmup_steps: int) -> list[str]:
    """Hints the fork prints for Prodigy (lr < 0.1, warmup > 0). The loop logs them as warnings."""
    tips = []
    if name == "prodigy":
        if lr < 0.1:
            tips.append(f"Prodigy estimates the step size itself; --learning_rate {lr} is a multiplier, usually 1.0")
        if warmup_steps > 0:
            tips.append(f"Prodigy has its own warmup (safeguard_warmup); --warmup_steps {warmup_steps} can usually be 0")
    return tips


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, final_fraction: float = 0.0) -> float:
    """The LR multiplier at optimizer step `step` (fork `configure_optimizers.lr_lambda`).

    step < warmup: step / max(1, warmup) (so 0.0 at step 0). After: progress p =
    (step - warmup) / max(1, max_steps - warmup); multiplier = max(0, 1 - p) * (1 - f) + f, which
    is 1 at the end of warmup, `f` at max_steps and stays `f` after it.
    """
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, max_steps - warmup_steps))
    remaining = max(0.0, 1.0 - progress)
    return remaining * (1.0 - final_fraction) + final_fraction


@dataclass
class WarmupLinearDecay:
    """`lr_multiplier` as a callable object rather than a function.

    LambdaLR's `state_dict()` stores the `__dict__` of callable objects (never plain functions),
    so these three numbers travel in the checkpoint as JSON and a resumed run can check them.
    """

    warmup_steps: int
    max_steps: int
    final_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.warmup_steps, self.max_steps, self.final_fraction)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 10,
    max_steps: int = 10000,
    final_fraction: float | None = None,
    *,
    optimizer_name: str | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then linear decay (fork `configure_optimizers`); call `.step()` per optimizer step.

    Args:
        optimizer: from `build_optimizer`.
        warmup_steps: fork default 10; upstream 10.
        max_steps: where the decay reaches `final_fraction` (fork default 10000).
        final_fraction: LR multiplier at max_steps. None = the fork's per-optimizer value,
            looked up from `optimizer_name` (or the optimizer class): 0 for AdamW, 0.1 for Prodigy.
        optimizer_name: "adamw" or "prodigy" (only used when final_fraction is None).
    """
    if warmup_steps < 0 or max_steps < 1:
        raise UsageError(
            f"bad schedule: warmup_steps={warmup_steps}, max_steps={max_steps}",
            fix="use --warmup_steps >= 0 and --max_steps >= 1",
        )
    if final_fraction is None:
        name = optimizer_name or type(optimizer).__name__.lower()
        if name not in FINAL_LR_FRACTION:
            raise UsageError(f"no default final LR fraction for optimizer {name!r}", fix="pass final_fraction")
        final_fraction = FINAL_LR_FRACTION[name]
    rule = WarmupLinearDecay(int(warmup_steps), int(max_steps), float(final_fraction))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rule)
