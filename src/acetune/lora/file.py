"""Read a LoRA `.safetensors` file and work out each module's scale: the one rule `acetune export`,
`acetune generate` and LoRA fusing share.

A module's delta is `scale · B @ A` (A (r, in), B (out, r)). Its scale comes from, in order:

1. a `.alpha` tensor for that module: scale = alpha / r (ComfyUI's rule; r = rows of A);
2. else a peft config: the one passed explicitly, else the `lora_adapter_metadata` JSON diffusers
   embeds in the safetensors header, else `adapter_config.json` beside the file:
   scale = lora_alpha / r, or lora_alpha / sqrt(r) with `use_rslora` (peft
   `LoraLayer.update_layer`; `rank_pattern`/`alpha_pattern` honoured);
3. else none: `if_no_scale` decides (raise, or 1.0 as for a file exported with `--bake_alpha`).

Key forms: everything `acetune.lora.keys` parses. Data layer: imports no stage and no model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from acetune.errors import InputError, UsageError
from acetune.lora import keys as lk
from acetune.lora.check import check_finite

logger = logging.getLogger(__name__)

# What `read_lora` does when a file has neither `.alpha` tensors nor a peft config.
NO_SCALE_ERROR = "error"  # raise InputError (export: writing a file with a guessed scale is wrong)
NO_SCALE_WARN = "warn"  # scale 1.0 with a warning (generate: ComfyUI does the same)
NO_SCALE_BAKED = "baked"  # scale 1.0 silently (the user said alpha is baked in)
NO_SCALE_CHOICES = (NO_SCALE_ERROR, NO_SCALE_WARN, NO_SCALE_BAKED)

# `LoraFile.scale_source` values (an explicit config is named by its path).
SOURCE_ALPHA = "alpha tensors"
SOURCE_METADATA = "safetensors metadata"
SOURCE_BESIDE = lk.ADAPTER_CONFIG_FILE
SOURCE_NONE = "none (scale 1.0)"


@dataclass
class LoraModule:
    """One adapted linear layer: delta W = scale · b @ a, a (r, in), b (out, r).

    DoRA (`acetune.lora.dora`): `magnitude` (peft's m, (out,)) or `dora_scale` (ComfyUI's, (out, 1)).
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None

    @property
    def dora(self) -> bool:
        return self.magnitude is not None or self.dora_scale is not None

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass
class LoraFile:
    """A LoRA read from disk: `{module path: LoraModule}`, its peft config and where the scale came from."""

    path: Path  # the .safetensors file (inside the folder, when a checkpoint folder was given)
    modules: dict[str, LoraModule]
    config: dict | None  # the peft config found (even when .alpha tensors set the scale), else None
    scale_source: str  # SOURCE_* or the explicit config's path


def peft_scale(lora_alpha: float, r: int, use_rslora: bool) -> float:
    """peft's LoRA scale (`LoraLayer.update_layer`): alpha / sqrt(r) with rsLoRA, else alpha / r."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def pattern_value(pattern: dict | None, module: str, default):
    """The `rank_pattern`/`alpha_pattern` entry for `module`, else `default`."""
    # peft matches pattern keys as `(.*\.)?<key>$` against the module path.
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _check_config(data, path: Path) -> dict:
    if not isinstance(data, dict) or "r" not in data or "lora_alpha" not in data:
        raise InputError("adapter config lacks r or lora_alpha", path=path,
                         fix="pass the adapter_config.json written with the LoRA")
    return data


def read_adapter_config(path: str | Path) -> dict:
    """A peft adapter config JSON (must hold `r` and `lora_alpha`); InputError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read adapter config ({e.__class__.__name__}: {e})", path=path,
                         fix="pass the peft adapter_config.json written with the LoRA") from None
    return _check_config(data, path)


def resolve_lora_path(path: str | Path) -> Path:
    """A LoRA file, or the `pytorch_lora_weights.safetensors` inside a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / lk.LORA_WEIGHTS_FILE
    if not path.is_file():
        raise InputError("LoRA file not found", path=path,
                         fix=f"pass a .safetensors file or a checkpoint folder holding {lk.LORA_WEIGHTS_FILE}")
    return path


def read_lora(path: str | Path, config_path: str | Path | None = None, *,
              if_no_scale: str = NO_SCALE_WARN) -> LoraFile:
    """Read a LoRA file (or a checkpoint folder holding one) in any accepted key form.

    Args:
        config_path: a peft adapter config that overrides the embedded one and the one beside the file.
        if_no_scale: no `.alpha` tensors and no config: NO_SCALE_ERROR raises, NO_SCALE_WARN applies
            1.0 with a warning, NO_SCALE_BAKED applies 1.0 silently.
    Raises:
        InputError (one line naming the file) for a missing/unreadable file, keys that are not LoRA
        keys of the v1 transformer, an unreadable config, a config rank that disagrees with the
        tensors, or (NO_SCALE_ERROR) an unknown scale.
    """
    if if_no_scale not in NO_SCALE_CHOICES:
        raise ValueError(f"if_no_scale must be one of {NO_SCALE_CHOICES}, got {if_no_scale!r}")
    path = resolve_lora_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several error types for a bad header
        raise InputError(f"not a readable safetensors file ({e.__class__.__name__})", path=path,
                         fix="pass the .safetensors file a training checkpoint or an export holds") from None
    grouped = lk.split_modules(tensors, path=path)
    check_finite(tensors, path)

    config, source, config_file = None, SOURCE_NONE, None
    if config_path:
        config_file = Path(config_path)
        config, source = read_adapter_config(config_file), str(config_file)
    elif lk.ADAPTER_METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[lk.ADAPTER_METADATA_KEY])
        except ValueError:
            logger.warning("%s: unreadable embedded adapter config, ignored", path)
        else:
            config, source, config_file = _check_config(embedded, path), SOURCE_METADATA, path
    beside = path.parent / lk.ADAPTER_CONFIG_FILE
    if config is None and beside.is_file():
        config, source, config_file = read_adapter_config(beside), SOURCE_BESIDE, beside

    if any(lk.ALPHA in parts for parts in grouped.values()):
        source = SOURCE_ALPHA
    elif config is None:
        if if_no_scale == NO_SCALE_ERROR:
            raise InputError("no adapter config found (nor .alpha tensors), so the LoRA scale is unknown", path=path,
                             fix=f"pass --lora_config_path, put {lk.ADAPTER_CONFIG_FILE} next to it, "
                                 "or --assume_baked if alpha is already baked in")
        if if_no_scale == NO_SCALE_WARN:
            logger.warning("%s: no .alpha tensors and no adapter config: applying scale 1.0 (right for a file "
                           "exported with --bake_alpha; a raw training file needs its %s beside it)",
                           path, lk.ADAPTER_CONFIG_FILE)

    modules = {}
    for name, parts in grouped.items():
        a, b = parts[lk.LORA_A], parts[lk.LORA_B]
        r = a.shape[0]
        if lk.ALPHA in parts:  # ComfyUI's rule: alpha / rank, rank = rows of A
            scale = float(parts[lk.ALPHA].float().reshape(-1)[0]) / r
        elif config is not None:
            r_cfg = pattern_value(config.get("rank_pattern"), name, config["r"])
            if r_cfg != r:
                raise InputError(f"adapter config {config_file} says r={r_cfg} but module {name!r} has rank {r}",
                                 path=path, fix="use the adapter config this LoRA was trained with")
            alpha = pattern_value(config.get("alpha_pattern"), name, config["lora_alpha"])
            scale = peft_scale(alpha, r, bool(config.get("use_rslora", False)))
        else:
            scale = 1.0
        modules[name] = LoraModule(a, b, scale, parts.get(lk.MAGNITUDE), parts.get(lk.DORA_SCALE))
    return LoraFile(path, modules, config, source)


def _same_safetensors(a: Path, b: Path) -> bool:
    """Same tensors and metadata (the header's key order is not stable, so bytes can differ)."""
    try:
        with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
            return (fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                    and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))
    except Exception:  # not a safetensors file: something else
        return False


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict, overwrite: bool = True) -> Path:
    """Write a LoRA file atomically (temp + rename; the temp goes on every exit path).

    A file with the same content is left as it is; `overwrite=False` refuses to replace one with other content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        if path.is_file() and _same_safetensors(tmp, path):
            return path  # the same content is there already: leave the file (and its bytes) alone
        if not overwrite and path.exists():
            raise UsageError("exists and holds something else", path=path,
                             fix="pass --overwrite to replace it, or choose another --output_name")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
