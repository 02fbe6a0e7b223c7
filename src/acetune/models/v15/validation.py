"""Validation renders during `acetune train` for ACE-Step 1.5 (`family.validation_renderer`).

`training.validation.render_validation` asks the family for a renderer once per validation point;
this one wraps an `AceStepPipeline` whose DiT is the in-training `AceStepTransformer1DModel`
itself (peft adapter active, eval mode), with the VAE, Qwen3 text encoder and condition encoder
loaded from the checkpoint in the DiT's dtype and device. They are freed with the renderer, right
after the render, as v1's `free_encoders=True` does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from acetune.errors import CheckpointError
from acetune.models.v15.generate import generate

TURBO_STEPS = 8  # the turbo model's distilled schedule (the pipeline default)
BASE_STEPS = 32  # base / sft checkpoints: acetune's validation default (CFG on, guidance 7)
BASE_GUIDANCE = 7.0  # AceStepPipeline's default guidance_scale


class V15Renderer:
    """`.render(prompt, lyrics, duration, seed, settings) -> (2, N)` float32 CPU audio at `.sample_rate`.

    Args:
        transformer: the DiT being trained (not copied: the render sees the current adapter weights).
        checkpoint_dir: the diffusers ACE-Step 1.5 folder the DiT came from.
        steps: sampler steps (default: 8 for turbo checkpoints, 32 otherwise).
    """

    def __init__(self, transformer: torch.nn.Module, checkpoint_dir: str | Path, steps: int | None = None):
        from diffusers import AceStepPipeline

        param = next(transformer.parameters())
        dtype = transformer.dtype if hasattr(transformer, "dtype") else param.dtype
        try:
            self.pipe = AceStepPipeline.from_pretrained(str(checkpoint_dir), transformer=transformer, dtype=dtype)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the ACE-Step 1.5 pipeline for validation ({e})", path=checkpoint_dir,
                                  fix="pass the diffusers ACE-Step 1.5 folder (with model_index.json)") from None
        for name in ("vae", "text_encoder", "condition_encoder"):
            getattr(self.pipe, name).to(param.device)
        turbo = bool(getattr(transformer.config, "is_turbo", False))
        self.steps = steps or (TURBO_STEPS if turbo else BASE_STEPS)
        self.guidance_scale = 1.0 if turbo else BASE_GUIDANCE
        self.sample_rate = self.pipe.sample_rate if hasattr(self.pipe, "sample_rate") else 48000

    def render(self, prompt: str, lyrics: str = "", duration: float = 30.0, seed: int = 0, settings=None
               ) -> torch.Tensor:
        """One clip; `settings` (v1's `SamplerSettings`) is accepted for the shared interface and unused."""
        with torch.no_grad():
            return generate(self.pipe, prompt, lyrics=lyrics, duration=duration, steps=self.steps, seed=seed,
                            guidance_scale=self.guidance_scale)


def validation_renderer(transformer: torch.nn.Module, checkpoint_dir: str | Path, **options) -> V15Renderer:
    """The family hook (`ModelFamily.validation_renderer`); `options` may set `steps`."""
    return V15Renderer(transformer, checkpoint_dir, steps=options.get("steps"))
