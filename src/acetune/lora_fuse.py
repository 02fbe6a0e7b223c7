"""Fuse LoRA files into a model's linear weights at a strength, and undo it.

For every adapted module: `W += strength · scale · B @ A` (A (r, in), B (out, r)), summed over the
LoRAs in fp32 and cast once to W's dtype. The scale of each module is read from the file itself,
the same rule `acetune export` uses (`acetune.stages.export.load_lora`) and ComfyUI follows:

1. a `.alpha` tensor for that module: scale = alpha / r (ComfyUI's rule; r = rows of A);
2. else the peft config: the `lora_adapter_metadata` JSON in the safetensors header, or
   `adapter_config.json` beside the file: scale = lora_alpha / r, or lora_alpha / sqrt(r) with
   `use_rslora` (peft `LoraLayer.update_layer`; `rank_pattern`/`alpha_pattern` honoured);
3. else 1.0 (a file whose alpha is baked in, as `acetune export --bake_alpha` writes).

So a checkpoint folder's `pytorch_lora_weights.safetensors` at strength 1.0 reproduces the model the
trainer saw, and so does its ComfyUI export. Key forms: everything `acetune.lora_keys` parses.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from acetune import lora_keys as lk
from acetune.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class LoraDelta:
    """One adapted linear layer: delta W = scale · b @ a, a (r, in), b (out, r)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


@dataclass
class LoraFile:
    """A LoRA read from disk: `{module path: LoraDelta}` and where its scale came from."""

    path: Path
    modules: dict[str, LoraDelta]
    scale_source: str  # "alpha tensors", "adapter_config.json", "safetensors metadata" or "none (scale 1.0)"


def _peft_scale(lora_alpha: float, r: int, use_rslora: bool) -> float:
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def _pattern_value(pattern: dict | None, module: str, default):
    # peft matches rank_pattern / alpha_pattern keys as `(.*\.)?<key>$` against the module path.
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA `.safetensors` (or a checkpoint folder holding `pytorch_lora_weights.safetensors`).

    Raises InputError (one line naming the file) for a missing/unreadable file, keys that are not
    LoRA keys of the v1 transformer, or an adapter config whose rank disagrees with the tensors.
    """
    path = Path(path)
    if path.is_dir():
        path = path / lk.LORA_WEIGHTS_FILE
    if not path.is_file():
        raise InputError("LoRA file not found", path=path,
                         fix=f"pass a .safetensors file or a checkpoint folder holding {lk.LORA_WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several error types for a bad header
        raise InputError(f"not a readable safetensors file ({e.__class__.__name__})", path=path,
                         fix="pass the .safetensors file a training checkpoint or an export holds") from None
    grouped = lk.split_modules(tensors, path=path)
    config, source = None, "none (scale 1.0)"
    if lk.ADAPTER_METADATA_KEY in metadata:
        try:
            config, source = json.loads(metadata[lk.ADAPTER_METADATA_KEY]), "safetensors metadata"
        except ValueError:
            logger.warning("%s: unreadable embedded adapter config, ignored", path)
    beside = path.parent / lk.ADAPTER_CONFIG_FILE
    if config is None and beside.is_file():
        try:
            config, source = json.loads(beside.read_text(encoding="utf-8")), lk.ADAPTER_CONFIG_FILE
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {lk.ADAPTER_CONFIG_FILE} ({e})", path=beside,
                             fix="fix or delete it (then the file's .alpha tensors or scale 1.0 apply)") from None
    if config is not None and not (isinstance(config, dict) and "r" in config and "lora_alpha" in config):
        raise InputError("adapter config lacks r or lora_alpha", path=beside if source != "safetensors metadata"
                         else path, fix="pass the adapter_config.json written with the LoRA")
    if any(lk.ALPHA in parts for parts in grouped.values()):
        source = "alpha tensors"
    elif config is None:
        logger.warning("%s: no .alpha tensors and no adapter config: applying scale 1.0 (right for a file "
                       "exported with --bake_alpha; a raw training file needs its %s beside it)",
                       path, lk.ADAPTER_CONFIG_FILE)
    modules = {}
    for name, parts in grouped.items():
        a, b = parts[lk.LORA_A], parts[lk.LORA_B]
        r = a.shape[0]
        if lk.ALPHA in parts:
            scale = float(parts[lk.ALPHA].float().reshape(-1)[0]) / r
        elif config is not None:
            r_cfg = _pattern_value(config.get("rank_pattern"), name, config["r"])
            if r_cfg != r:
                raise InputError(f"adapter config says r={r_cfg} but module {name!r} has rank {r}", path=path,
                                 fix="put the adapter_config.json this LoRA was trained with next to it")
            alpha = _pattern_value(config.get("alpha_pattern"), name, config["lora_alpha"])
            scale = _peft_scale(alpha, r, bool(config.get("use_rslora", False)))
        else:
            scale = 1.0
        modules[name] = LoraDelta(a, b, scale)
    return LoraFile(path, modules, source)


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
