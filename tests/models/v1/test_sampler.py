"""v1 sampler: golden case `v1_sampler` plus the behaviour around it on a tiny det_init model."""

from __future__ import annotations

import json

import pytest
import torch

from acetune.models.v1.loading import config_kwargs
from acetune.models.v1.sampler import (
    SamplerSettings,
    generators_from_seeds,
    latent_frames,
    scaled_outputs,
    text2music_latents,
)
from acetune.models.v1.transformer import ACEStepTransformer2DModel, build_transformer
from acetune.parity.det_init import det_init_
from acetune.parity.registry import run_case
from golden_checks import assert_rows_pass


def test_golden_v1_sampler(golden):
    rows = assert_rows_pass(run_case("v1_sampler", golden))
    # 2 cases × (2 call counts + 8 steps × 6 tensors + 12 decodes + 2 encodes + noise + final latents)
    assert len(rows) == 132


@pytest.fixture(scope="module")
def tiny(golden):
    config = json.loads((golden / "v1_transformer_tiny" / "config.json").read_text())
    model = build_transformer(config_kwargs(ACEStepTransformer2DModel, config))
    det_init_(model)
    return model.eval()


def _inputs(n: int = 2, g: torch.Generator | None = None):
    g = g or torch.Generator().manual_seed(0)
    text = torch.randn(n, 5, 32, generator=g)
    return (text, torch.ones(n, 5, dtype=torch.long), torch.zeros(n, 16),
            torch.randint(3, 100, (n, 7), generator=g), torch.ones(n, 7, dtype=torch.long))


def _run(model, settings, seeds=(1, 2), trace=None, n=2):
    return text2music_latents(model, *_inputs(n), frames=6, generators=generators_from_seeds(seeds[:n]),
                              settings=settings, trace=trace)


def test_latent_frames_and_settings():
    assert latent_frames(2.0) == 21 and latent_frames(60.0) == 645
    s = SamplerSettings.method_defaults(infer_steps=8)
    assert (s.guidance_interval_decay, s.use_erg_lyric, s.use_erg_diffusion, s.infer_steps) == (1.0, False, False, 8)
    assert SamplerSettings().use_erg_diffusion and SamplerSettings().infer_steps == 60
    with pytest.raises(ValueError, match="cfg_type"):
        SamplerSettings(cfg_type="cfg_star")


def test_call_counts_with_and_without_guidance(tiny):
    trace = {}
    _run(tiny, SamplerSettings.method_defaults(infer_steps=8), trace=trace)
    assert sum(k.startswith("decode_call.") for k in trace) == 12  # 4 guided steps × 2 + 4
    assert sum(k.startswith("encode_call.") for k in trace) == 2
    trace = {}
    out = _run(tiny, SamplerSettings.method_defaults(infer_steps=4, guidance_scale=1.0), trace=trace)
    assert sum(k.startswith("decode_call.") for k in trace) == 4 and "encode_call.1" not in trace
    assert out.shape == (2, 8, 16, 6) and torch.isfinite(out).all()


def test_seeds_are_per_item_and_reproducible(tiny):
    settings = SamplerSettings.method_defaults(infer_steps=3, cfg_type="cfg")
    a, b = {}, {}
    out_a = _run(tiny, settings, seeds=(7, 8), trace=a)
    out_b = _run(tiny, settings, seeds=(7, 8), trace=b)
    assert torch.equal(out_a, out_b)
    single = {}
    _run(tiny, settings, seeds=(8,), trace=single, n=1)
    assert torch.equal(a["initial_noise"][1], single["initial_noise"][0])
    with pytest.raises(ValueError, match="one generator per item"):
        text2music_latents(tiny, *_inputs(2), frames=6, generators=generators_from_seeds([1]), settings=settings)


def test_erg_needs_enough_blocks(tiny):
    with pytest.raises(ValueError, match="ERG diffusion needs >= 20"):
        _run(tiny, SamplerSettings(infer_steps=2, use_erg_lyric=False))
    with pytest.raises(ValueError, match="ERG lyric needs >= 6"):
        _run(tiny, SamplerSettings(infer_steps=2, use_erg_diffusion=False))


def test_scaled_outputs_hooks_are_removed(tiny):
    layer = tiny.transformer_blocks[0].attn.to_q
    x = torch.randn(3, layer.in_features)
    plain = layer(x)
    with scaled_outputs([layer], 0.01):
        torch.testing.assert_close(layer(x), plain * 0.01)
    torch.testing.assert_close(layer(x), plain)
    assert not layer._forward_hooks
