"""LoRA gradients held in bf16 between the backward and the optimizer step, when that loses nothing.

Under bf16 autocast an fp32 LoRA weight enters its matmul as a bf16 cast, so its gradient is a bf16
tensor widened to fp32: every value is exactly a bf16 value, and half of the fp32 gradient's bytes are
zeros. With one micro-batch per optimizer step (no accumulation across backward passes) and one process
(no all-reduce in flight), each LoRA weight's gradient is kept in bf16 as soon as it is accumulated and
widened back to the very same fp32 tensor just before clipping: the clip, the optimizer step and every
number after them are unchanged (tests/training/test_lean_grads.py checks it bit for bit), and the
backward holds half the gradient bytes (0.25 -> 0.125 GB for rsLoRA r64 on the official v1 config).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def lean_params(setup, *, autocast: bool, compute_dtype: torch.dtype, accumulate: int,
                processes: int) -> list[torch.nn.Parameter]:
    """The trained tensors of `setup` (a LoRA setup: `names`, `params`, `config`) whose gradients may be held
    in bf16: fp32 LoRA A/B weights of a one-process run under bf16 autocast with one micro-batch per step.
    DoRA, LoKr and full fine-tunes keep fp32 gradients (their tensors also meet fp32 math in the forward)."""
    names, params = getattr(setup, "names", None), getattr(setup, "params", None)
    config = getattr(setup, "config", None) or {}
    if not (names and autocast and compute_dtype == torch.bfloat16 and accumulate == 1 and processes == 1
            and not config.get("use_dora")):
        return []
    return [p for n, p in zip(names, params) if p.dtype == torch.float32 and (".lora_A." in n or ".lora_B." in n)]


class Bf16Grads:
    """Post-accumulate hooks that move each gradient into a bf16 stash; `restore()` puts the fp32 back.

    Each held gradient is compared with its bf16 copy on the device (no sync); `restore()` reads the
    verdict once per step. Should a gradient ever not be a bf16 value (a weight cast twice in one step), the
    run warns and keeps fp32 gradients from then on (that step's gradients were rounded to bf16)."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = list(params)
        self.stash: dict[int, torch.Tensor] = {}
        self.inexact: torch.Tensor | None = None
        self.handles = [p.register_post_accumulate_grad_hook(self._hold) for p in self.params]

    def _hold(self, param: torch.nn.Parameter) -> None:
        grad = param.grad
        low = grad.to(torch.bfloat16)
        lost = (low.float() != grad).logical_and_(grad == grad).any()  # NaN never equals itself: not a loss
        self.inexact = lost if self.inexact is None else self.inexact.logical_or_(lost)
        self.stash[id(param)] = low
        param.grad = None

    def restore(self) -> None:
        """Widen every stashed gradient back into `.grad` (fp32), before clipping and the step."""
        self._widen()
        if self.inexact is not None and bool(self.inexact):
            logger.warning("a LoRA gradient was not a bf16 value; this step's gradients were rounded to bf16, "
                           "later steps keep them in fp32 (please report this model and LoRA config)")
            self.remove()
        self.inexact = None

    def _widen(self) -> None:
        for p in self.params:
            held = self.stash.pop(id(p), None)
            if held is not None:
                p.grad = held.float()

    def remove(self) -> None:
        self._widen()
        for h in self.handles:
            h.remove()
        self.handles = []


@contextlib.contextmanager
def bf16_grads(params: list[torch.nn.Parameter]) -> Iterator[Bf16Grads]:
    """`Bf16Grads` over `params` (none: a no-op) for the duration of a run."""
    grads = Bf16Grads(params)
    try:
        yield grads
    finally:
        grads.remove()
