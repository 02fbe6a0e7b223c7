"""`--compile` on the ACE-Step 1.5 DiT (issue 21). Refused today: compiled under gradient checkpointing with a
peft LoRA, the forward matched eager but the first self-attention's LoRA gradients differed by ~10%
(2026-12-03, torch 2.13.0 CPU). The slow test is the check to rerun before allowing it."""

from __future__ import annotations

import pytest
import torch

from acetune.models.v15.adapters import adapter_state
from acetune.models.v15.tiny import TINY_ACOUSTIC_DIM, TINY_HIDDEN, tiny_transformer_config
from acetune.training.compiled import compile_blocks, transformer_blocks, uncompile_blocks
from acetune.training.lora import add_lora

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def test_compile_is_refused_for_the_15_dit():
    from diffusers import AceStepTransformer1DModel

    from acetune.errors import UsageError

    model = AceStepTransformer1DModel(**tiny_transformer_config())
    with pytest.raises(UsageError, match="v1 only"):
        compile_blocks(model)
    assert all(block._compiled_call_impl is None for block in transformer_blocks(model))


@pytest.mark.slow  # Inductor compiles C++ for a minute or more on 2 cores
@pytest.mark.xfail(strict=True, reason="LoRA gradients of the compiled 1.5 DiT differ from eager (~10%)")
def test_compile_matches_eager_on_the_15_dit():
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(0)
    model = AceStepTransformer1DModel(**tiny_transformer_config())
    setup = add_lora(model, LORA)
    with torch.no_grad():
        for name, p in zip(setup.names, setup.params):
            if ".lora_B." in name:
                p.normal_(0.0, 0.05)
    model.enable_gradient_checkpointing()
    model.train()
    frames = 24  # > sliding_window 8: the sliding layers get their banded mask
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, frames, TINY_ACOUSTIC_DIM, generator=g),
                  timestep=torch.tensor([0.3, 0.8]), timestep_r=torch.tensor([0.3, 0.8]),
                  encoder_hidden_states=torch.randn(2, 7, TINY_HIDDEN, generator=g),
                  context_latents=torch.randn(2, frames, 2 * TINY_ACOUSTIC_DIM, generator=g), return_dict=False)

    def step():
        for p in setup.params:
            p.grad = None
        out = model(**inputs)[0]
        out.square().mean().backward()
        return {"out": out.detach(), **{n: p.grad.clone() for n, p in zip(setup.names, setup.params)}}

    names, adapter_keys = list(model.state_dict()), sorted(adapter_state(model, setup.adapter_name))
    eager = step()
    assert compile_blocks(model, allow_15=True) == len(transformer_blocks(model)) == 2  # the DiT's `layers`
    compiled = step()
    assert list(model.state_dict()) == names
    assert sorted(adapter_state(model, setup.adapter_name)) == adapter_keys
    assert len(eager) == 1 + 2 * 2 * 2 * 4  # 2 layers x (self, cross) x (q, k, v, out) x (A, B)
    for name, ref in eager.items():
        assert (compiled[name] - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-7, name
    assert uncompile_blocks(model) == 2
