"""Weights are checked where they enter and where they leave: NaN/inf, and widths against the model.

A LoRA trained into divergence, or made for another model size, must be refused with one line naming
the module, not exported, merged or rendered (a NaN delta turns every sample into NaN; a WAV writer
then clips that to a constant). Used by export, merge, generate and `train --init_lora`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from acetune.errors import InputError

_FIX_NON_FINITE = "the training diverged before this save: use an earlier step-* checkpoint (or retrain with a lower --learning_rate)"


def _module_of(key: str) -> str:
    from acetune.lora.keys import parse_key

    try:
        return parse_key(key)[0]
    except ValueError:
        return key


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike | None, what: str = "LoRA") -> None:
    """InputError naming the first module (sorted) whose tensors hold NaN or inf, and how many."""
    bad = []
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(key)
    if bad:
        t = tensors[bad[0]]
        count = int((~torch.isfinite(t)).sum())
        modules = sorted({_module_of(k) for k in bad})
        raise InputError(f"{what} module {modules[0]!r} holds {count} NaN/inf values (key {bad[0]!r}; "
                         f"{len(modules)} module(s) affected)", path=path, fix=_FIX_NON_FINITE)


def check_file_finite(path: str | os.PathLike, what: str = "LoRA") -> None:
    """`check_finite` on every tensor of a .safetensors file (read one tensor at a time)."""
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            check_finite({key: f.get_tensor(key)}, path, what)


def weight_shapes(transformer_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a diffusers model folder, read from the safetensors headers only."""
    folder = Path(transformer_dir)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = [p.name for p in folder.glob("*.safetensors")]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_widths(pairs: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]], shapes: Mapping[str, tuple[int, ...]],
                 path: str | os.PathLike | None, model: str | os.PathLike) -> None:
    """Each LoRA module `name: (A shape (r, in), B shape (out, r))` must sit on a 2-D `name.weight` (out, in)."""
    for name in sorted(pairs):
        a, b = pairs[name]
        weight = shapes.get(f"{name}.weight")
        if weight is None:
            raise InputError(f"LoRA module {name!r} is not a layer of the model in {model}", path=path,
                             fix="use the LoRA with the model it was trained on")
        if len(weight) != 2 or (b[0], a[1]) != tuple(weight):
            raise InputError(f"LoRA module {name!r} maps {a[1]} -> {b[0]} features but the model's layer is "
                             f"{weight[1] if len(weight) == 2 else weight} -> {weight[0]} (in {model})", path=path,
                             fix="this LoRA was made for a model of another size; use the matching model")


def check_consistent(pairs: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
                     path: str | os.PathLike | None) -> None:
    """Without a model to check against: modules that differ only in their block number must share one shape
    (a model's blocks are identical), so one module made for another size is refused, naming it."""
    groups: dict[str, dict[tuple, list[str]]] = {}
    for name, (a, b) in pairs.items():
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        groups.setdefault(pattern, {}).setdefault((a[1], b[0]), []).append(name)
    for pattern, by_shape in sorted(groups.items()):
        if len(by_shape) > 1:
            common = max(by_shape, key=lambda s: len(by_shape[s]))
            odd = sorted(n for s, names in by_shape.items() if s != common for n in names)
            shape = next(s for s in by_shape if s != common)
            raise InputError(f"LoRA module {odd[0]!r} maps {shape[0]} -> {shape[1]} features but the other "
                             f"{len(by_shape[common])} {pattern!r} modules map {common[0]} -> {common[1]}",
                             path=path, fix="the file is damaged or mixes two models; re-export it from the "
                                            "training checkpoint")


def check_render(wav: torch.Tensor, out: str | os.PathLike) -> None:
    """Refuse to write audio that holds NaN/inf or never changes (a broken model or LoRA, not music)."""
    from acetune.errors import AcetuneError

    if not bool(torch.isfinite(wav).all()):
        raise AcetuneError(f"the render holds {int((~torch.isfinite(wav)).sum())} NaN/inf samples; nothing was "
                           "written", path=out, fix="run without --lora to find the LoRA at fault, or try --dtype fp32")
    if wav.numel() and float(wav.max() - wav.min()) == 0.0:
        raise AcetuneError(f"the render is constant (every sample {float(wav.flatten()[0]):g}); nothing was written",
                           path=out, fix="run without --lora to find the LoRA at fault, or try --dtype fp32")
