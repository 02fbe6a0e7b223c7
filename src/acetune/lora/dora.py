"""DoRA (peft `use_dora`) in the form ComfyUI applies, and the base weights it needs.

peft's DoRA weight for a linear W (out, in) with LoRA delta D = s · B @ A and magnitude m (out,):

    W' = m · (W + D) / ‖W + D‖_row                (row norm over `in`, one per output)

ComfyUI reads `<prefix>.dora_scale` (out, 1) and computes (facts: ../shared/facts/comfyui-lora.md)

    W_calc = W + D;   W_calc *= dora_scale / (‖W‖_row + eps)

dividing by the BASE weight's row norm. So the file loads exactly at strength 1.0 when
`dora_scale = m · ‖W‖_row / ‖W + D‖_row`, computed here from the base weights at export time.
(ComfyUI adds eps = finfo(dtype).eps to ‖W‖_row: ~1e-7 relative in fp32, below every tolerance we test.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from acetune.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"


def dora_scale_for_comfyui(magnitude: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`m · ‖W‖_row / ‖W + D‖_row` as (out, 1) float32 (computed in float64)."""
    w, d = weight.double(), delta.double()
    ratio = w.norm(dim=1) / (w + d).norm(dim=1)
    return (magnitude.double().reshape(-1) * ratio).reshape(-1, 1).float()


def peft_dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """peft's merged DoRA weight `m · (W + D) / ‖W + D‖_row` (float64)."""
    full = weight.double() + delta.double()
    return magnitude.double().reshape(-1, 1) * full / full.norm(dim=1, keepdim=True)


def comfyui_dora_weight(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor,
                        strength: float = 1.0) -> torch.Tensor:
    """What ComfyUI makes of W with a `dora_scale` (float64): W_calc at strength 1, interpolated otherwise."""
    w = weight.double()
    calc = (w + delta.double()) * (dora_scale.double().reshape(-1, 1) / w.norm(dim=1, keepdim=True))
    return w + strength * (calc - w)


def read_base_weights(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` from a diffusers model folder's safetensors (sharded or not), as stored.

    CheckpointError (one line) when the folder has no safetensors or a name is missing.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError("no .safetensors weights in this folder", path=folder,
                              fix="pass the base checkpoint the adapter was trained on")
    wanted, found = set(names), {}
    index = next(iter(sorted(folder.glob("*" + INDEX_SUFFIX))), None)
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({folder / weight_map[n] for n in wanted if n in weight_map}) or files
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in wanted & set(f.keys()):
                found[key] = f.get_tensor(key)
    missing = sorted(wanted - set(found))
    if missing:
        raise CheckpointError(f"{len(missing)} adapted weights are not in the base model (first: {missing[0]!r})",
                              path=folder, fix="pass the base checkpoint the adapter was trained on")
    return found


def check_fits(modules: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The base weight `<module>.weight` of every `LoraModule` in `modules`; CheckpointError if one is missing
    or its shape is not (rows of B, columns of A)."""
    weights = read_base_weights(folder, [f"{m}.weight" for m in modules])
    for m, mod in modules.items():
        w = weights[f"{m}.weight"]
        if tuple(w.shape) != (mod.b.shape[0], mod.a.shape[1]):
            raise CheckpointError(f"{m}: base weight {tuple(w.shape)} does not fit the LoRA's "
                                  f"({mod.b.shape[0]}, {mod.a.shape[1]})", path=folder,
                                  fix="pass the base checkpoint the LoRA was trained on")
    return weights


def with_comfyui_dora_scale(modules: dict, folder: Path) -> dict:
    """`{module: LoraModule}` with each peft magnitude replaced by ComfyUI's `dora_scale` (base weights from `folder`)."""
    from acetune.lora.file import LoraModule

    weights = check_fits(modules, folder)
    out = dict(modules)
    for m in [m for m, mod in modules.items() if mod.magnitude is not None]:
        mod, w = modules[m], weights[f"{m}.weight"]
        delta = mod.scale * (mod.b.double() @ mod.a.double())
        out[m] = LoraModule(mod.a, mod.b, mod.scale, None, dora_scale_for_comfyui(mod.magnitude, w, delta))
    return out
