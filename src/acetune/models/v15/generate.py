"""Render a clip with `AceStepPipeline`, optionally with a trained LoRA / LoKr.

LoRA files in the diffusers layout go through `AceStepPipeline.load_lora_weights` (with a check
that no key was left unused); ComfyUI-layout files (needed for LoKr, which diffusers cannot load)
are merged into the DiT weights with the arithmetic ComfyUI applies (`adapters.merge_comfyui_file`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from acetune.errors import CheckpointError, InputError
from acetune.lora.check import check_file_finite
from acetune.models.v15.adapters import (
    COMFYUI_PREFIX,
    adapter_state,
    merge_comfyui_file,
)

logger = logging.getLogger(__name__)


def load_pipeline(checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    from diffusers import AceStepPipeline

    try:
        pipe = AceStepPipeline.from_pretrained(str(checkpoint_dir), dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the ACE-Step 1.5 pipeline ({e})", path=checkpoint_dir,
                              fix="pass the diffusers ACE-Step 1.5 folder (with model_index.json)") from None
    return pipe.to(device)


def load_lora_checked(pipe, lora_file: str | Path, scale: float = 1.0, adapter_name: str = "acetune") -> int:
    """Load a diffusers-layout LoRA; `InputError` unless every tensor in the file landed. Returns count."""
    from safetensors import safe_open

    lora_file = Path(lora_file)
    with safe_open(str(lora_file), "pt") as f:
        keys = list(f.keys())
    if keys and keys[0].startswith(COMFYUI_PREFIX):
        return merge_comfyui_file(pipe.transformer, lora_file, strength=scale)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=adapter_name)
    pipe.set_adapters([adapter_name], [scale])
    loaded = {f"transformer.{k}" for k in adapter_state(pipe.transformer, adapter_name)}
    unused = sorted(set(keys) - loaded)
    if unused:
        raise InputError(f"{len(unused)} LoRA tensors match no module of this model (first: {unused[0]})",
                         path=lora_file, fix="export the LoRA again for this ACE-Step 1.5 checkpoint")
    return len(keys)


@torch.no_grad()
def apply_lora(pipe, path: str | Path, strength: float = 1.0) -> int:
    """Apply any 1.5 adapter file or training checkpoint folder to `pipe.transformer`; returns tensors/modules.

    diffusers layout (`transformer.` keys): `load_lora_checked`. Every other layout (ComfyUI, official
    peft, Side-Step, LyCORIS, the trainer's step folders; LoRA, LoKr, DoRA): merged at its trained scale.
    """
    from safetensors import safe_open

    from acetune.lora.import_15 import resolve_adapter_file

    weights = resolve_adapter_file(path)
    check_file_finite(weights)
    with safe_open(str(weights), "pt") as f:
        first = next(iter(f.keys()), "")
    if first.startswith("transformer."):
        return load_lora_checked(pipe, weights, strength, adapter_name=f"acetune_{weights.stem}")
    return merge_comfyui_file(pipe.transformer, weights, strength)  # any other layout `lora.import_15` reads


def generate(pipe, prompt: str, lyrics: str = "", duration: float = 10.0, steps: int = 8, seed: int = 0,
             lora_file: str | Path | None = None, lora_scale: float = 1.0, **meta) -> torch.Tensor:
    """(2, N) float32 audio at `pipe.sample_rate`.

    Args:
        pipe: from `load_pipeline`.
        prompt, lyrics: caption and lyrics (`meta` passes bpm, keyscale, timesignature, vocal_language).
        duration: seconds.  steps: sampler steps (8 for turbo).
        lora_file: diffusers- or ComfyUI-layout adapter file, or None.
    """
    if lora_file is not None:
        n = load_lora_checked(pipe, lora_file, lora_scale)
        logger.info("applied %d adapter tensors from %s", n, lora_file)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(prompt=prompt, lyrics=lyrics, audio_duration=duration, num_inference_steps=steps,
               generator=generator, **meta)
    return out.audios[0].float().cpu()
