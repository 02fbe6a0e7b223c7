"""Fuse LoRA files into a model's linear weights at a strength, and undo it.

For every adapted module: `W += strength · scale · B @ A` (A (r, in), B (out, r)), summed over the
LoRAs in fp32 and cast once to W's dtype. A DoRA module adds `strength · (W_dora - W)` (ComfyUI's
interpolation), W_dora being peft's (magnitude) or ComfyUI's (`dora_scale`) weight, see `lora.dora`. Files are read by `acetune.lora.file.read_lora`, which
works out each module's scale with the rule `acetune export` and ComfyUI follow (`.alpha` tensors,
else the peft config, else 1.0 as for a file exported with `--bake_alpha`).

So a checkpoint folder's `pytorch_lora_weights.safetensors` at strength 1.0 reproduces the model the
trainer saw, and so does its ComfyUI export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from acetune.errors import InputError
from acetune.lora.dora import comfyui_dora_weight, peft_dora_weight
from acetune.lora.file import LoraFile

logger = logging.getLogger(__name__)


def _target_linear(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The module at `name` (also under a peft `base_model.model.` wrapper); its `base_layer` if peft-wrapped."""
    for candidate in (name, "base_model.model." + name):
        try:
            module = model.get_submodule(candidate)
        except AttributeError:
            continue
        return getattr(module, "base_layer", module)
    return None


@dataclass
class FusedLoras:
    """What `fuse_loras` changed; `restore()` puts the original weights back (if they were kept)."""

    model: torch.nn.Module
    loras: list[tuple[LoraFile, float]]
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> CPU copy of W
    modules: list[str] = field(default_factory=list)

    def restore(self) -> None:
        if self.modules and not self.originals:
            raise RuntimeError("original weights were not kept (fuse_loras(keep_original=False)); reload the model")
        with torch.no_grad():
            for name, weight in self.originals.items():
                target = _target_linear(self.model, name).weight
                target.copy_(weight.to(target.device))
        self.originals.clear()
        self.modules.clear()


@torch.no_grad()
def fuse_loras(model: torch.nn.Module, loras: Sequence[tuple[LoraFile, float]],
               keep_original: bool = True) -> FusedLoras:
    """Add `strength · scale · B @ A` of every LoRA to the weights of `model` (in place).

    Args:
        model: the transformer (plain, or with a peft adapter injected: its `base_layer` is changed).
        loras: (LoraFile, strength) pairs; strength 0 leaves the model bit-identical.
        keep_original: keep a CPU copy of every changed weight so `restore()` is exact (bf16 cannot
            be un-fused by subtraction). False saves that memory when the model is used once.
    Raises:
        InputError naming the file: modules the model does not have (with their count), or shapes
        that do not fit.
    """
    deltas: dict[str, torch.Tensor] = {}
    for lora, strength in loras:
        missing = [m for m in lora.modules if _target_linear(model, m) is None]
        if missing:
            raise InputError(f"{len(missing)} of {len(lora.modules)} LoRA modules match no module of the "
                             f"transformer (first: {sorted(missing)[0]!r})", path=lora.path,
                             fix="this LoRA was trained for another model; pass a LoRA for ACE-Step v1")
        for name, d in lora.modules.items():
            weight = _target_linear(model, name).weight
            if weight.ndim != 2 or tuple(weight.shape) != (d.b.shape[0], d.a.shape[1]):
                raise InputError(f"LoRA module {name!r} is ({d.b.shape[0]}, {d.a.shape[1]}) but the model's "
                                 f"weight is {tuple(weight.shape)}", path=lora.path,
                                 fix="this LoRA was trained for a model of another size")
            if strength == 0.0:
                continue
            delta = (strength * d.scale) * (d.b.to(weight.device, torch.float32) @ d.a.to(weight.device, torch.float32))
            if d.dora:  # DoRA: the new weight is renormalised, so its delta depends on W (`lora.dora`)
                plain = delta / strength
                new = (peft_dora_weight(weight, plain, d.magnitude.to(weight.device)) if d.magnitude is not None
                       else comfyui_dora_weight(weight, plain, d.dora_scale.to(weight.device)))
                delta = (strength * (new - weight.double())).float()
            deltas[name] = delta if name not in deltas else deltas[name] + delta
    fused = FusedLoras(model, list(loras))
    for name, delta in deltas.items():
        weight = _target_linear(model, name).weight
        if keep_original:
            fused.originals[name] = weight.detach().to("cpu", copy=True)
        weight.copy_((weight.float() + delta).to(weight.dtype))
        fused.modules.append(name)
    logger.info("fused %d LoRA(s) into %d modules", len(loras), len(deltas))
    return fused
