"""Golden case `v1_sampler`: 8 guided Euler steps on two tiny models vs ../shared/golden/sampler.

- `tiny_method_defaults`: the `v1_transformer_tiny` config with det_init weights, batch 2, seeds
  1234/5678, the method's own defaults (decay 1.0, no ERG).
- `erg_call_defaults`: a 20-layer, 6-Conformer-block model with stored weights, batch 1, the
  `__call__` defaults with ERG tag/lyric/diffusion (ERG-tag text states given as an input).

Every step tensor, every model call and the final latents are compared at rel L2 1e-4 (README).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from acetune.models.v1.loading import config_kwargs, load_weights
from acetune.models.v1.sampler import (
    SamplerSettings,
    generators_from_seeds,
    latent_frames,
    text2music_latents,
)
from acetune.models.v1.transformer import ACEStepTransformer2DModel, build_transformer
from acetune.parity.det_init import det_init_
from acetune.parity.registry import Row, golden_case, row_exact, row_rel

CASE = "v1_sampler"
TOL = 1e-4  # README: sampler final latents and per-step tensors (APG at guidance 15 amplifies noise)


def _model(golden: Path, spec: dict):
    config_path = golden / spec["config"]
    model = build_transformer(config_kwargs(ACEStepTransformer2DModel, json.loads(config_path.read_text()), config_path))
    if spec["weights"].startswith("v1_transformer_tiny/"):
        det_init_(model)  # that weights file is exactly det_init (README); no need to read it
    else:
        load_weights(model, [golden / spec["weights"]])
    return model.eval()


def _settings(meta: dict, spec: dict) -> SamplerSettings:
    s = spec["settings"]
    if s.get("guidance_scale_text", 0.0) > 1.0 and s.get("guidance_scale_lyric", 0.0) > 1.0:
        raise ValueError("double-condition guidance is not implemented")
    return SamplerSettings(
        infer_steps=meta["infer_steps"], guidance_scale=s["guidance_scale"], cfg_type=s["cfg_type"],
        omega_scale=s["omega_scale"], guidance_interval=s["guidance_interval"],
        guidance_interval_decay=s["guidance_interval_decay"], min_guidance_scale=s["min_guidance_scale"],
        use_erg_lyric=s["use_erg_lyric"], use_erg_diffusion=s["use_erg_diffusion"],
    )


def run_sampler_case(golden: Path, name: str) -> list[Row]:
    golden = Path(golden)
    meta = json.loads((golden / "sampler" / "meta.json").read_text())
    spec = meta["cases"][name]
    ref = load_file(golden / "sampler" / f"{name}.safetensors")
    model = _model(golden, spec)
    trace: dict[str, torch.Tensor] = {}
    text2music_latents(
        model, ref["input.encoder_text_hidden_states"], ref["input.text_attention_mask"], ref["input.speaker_embds"],
        ref["input.lyric_token_ids"], ref["input.lyric_mask"],
        frames=latent_frames(meta["duration"]), generators=generators_from_seeds(spec["seeds"]),
        settings=_settings(meta, spec), encoder_text_hidden_states_null=ref.get("input.encoder_text_hidden_states_null"),
        trace=trace,
    )
    case = f"{CASE}:{name}"
    rows = [row_exact(case, "decode_calls", trace_count(trace, "decode_call."), spec["decode_calls"]),
            row_exact(case, "encode_calls", trace_count(trace, "encode_call."), spec["encode_calls"])]
    for key in sorted(k for k in ref if not k.startswith("input.")):
        rows.append(row_rel(case, key, trace.get(key, torch.empty(0)), ref[key], TOL))
    return rows


def trace_count(trace: dict, prefix: str) -> torch.Tensor:
    return torch.tensor(sum(1 for k in trace if k.startswith(prefix)))


@golden_case(CASE, folder="sampler")
def v1_sampler(golden: Path) -> list[Row]:
    return run_sampler_case(golden, "tiny_method_defaults") + run_sampler_case(golden, "erg_call_defaults")
