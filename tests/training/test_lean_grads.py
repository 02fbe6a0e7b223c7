"""LoRA gradients held in bf16 between the backward and the step (`training.lean_grads`): exact, and only where exact."""

from __future__ import annotations

import torch

from acetune.models.v1.family import FAMILY
from acetune.models.v1.transformer import ACEStepTransformer2DModel, tiny_transformer_config
from acetune.training.block_checkpointing import apply_checkpointing
from acetune.training.lean_grads import bf16_grads, lean_params
from acetune.training.lora import add_lora, lora_input_casting
from acetune.training.optim import build_optimizer

LORA = {"r": 4, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def _batch(cfg, frames: int = 40, seconds: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"target_latents": torch.randn(1, 8, 16, frames, generator=g), "attention_mask": torch.ones(1, frames),
            "encoder_text_hidden_states": torch.randn(1, 5, cfg.text_embedding_dim, generator=g),
            "text_attention_mask": torch.ones(1, 5), "speaker_embeds": torch.randn(1, cfg.speaker_embedding_dim, generator=g),
            "lyric_token_idx": torch.randint(1, 100, (1, 12), generator=g), "lyric_mask": torch.ones(1, 12),
            "ssl_hidden_states": [[torch.randn(seconds * hz, d, generator=g)] for hz, d in
                                  zip((75, 50), cfg.ssl_latent_dims)]}


def _steps(lean: bool, steps: int = 2):
    """Two bf16-mixed steps (bf16 weights, fp32 LoRA, autocast, clip, AdamW) of the tiny v1 model; returns
    (losses, the LoRA after the last step, bf16 tensors held after the first backward, .grad left by it)."""
    torch.manual_seed(0)
    model = ACEStepTransformer2DModel(**tiny_transformer_config()).to(torch.bfloat16)
    setup = add_lora(model, LORA)
    for p in setup.params:  # non-zero B so every LoRA tensor gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    apply_checkpointing(model.train(), 2)
    optimizer = build_optimizer(setup.params, "adamw", lr=1e-3)
    chosen = lean_params(setup, autocast=True, compute_dtype=torch.bfloat16, accumulate=1, processes=1) if lean else []
    batch, losses, held, left = _batch(model.config), [], None, None
    with lora_input_casting(model, enabled=False), bf16_grads(chosen) as grads:
        for i in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = FAMILY.training_loss(model, batch, noise=torch.randn_like(batch["target_latents"]),
                                            u=torch.full((1,), 0.1 * i)).loss
            loss.backward()
            if i == 0:
                held = [t.dtype for t in grads.stash.values()]
                left = [p.grad for p in setup.params]
            grads.restore()
            torch.nn.utils.clip_grad_norm_(setup.params, 0.01)  # small: the clip acts every step
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    return losses, [p.detach().clone() for p in setup.params], held, left


def test_bf16_held_grads_give_bitwise_the_same_training():
    ref_losses, ref_lora, held, _ = _steps(lean=False)
    assert held == []
    losses, lora, held, left = _steps(lean=True)
    assert len(held) == len(lora) == 32 and set(held) == {torch.bfloat16}
    assert all(g is None for g in left)  # nothing fp32 left behind during the backward
    assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses))
    assert all(torch.equal(a, b) for a, b in zip(lora, ref_lora))


def test_a_weight_cast_twice_is_caught_and_held_in_fp32_from_then_on(caplog):
    """Two autocast regions cast the weight twice: autograd sums two bf16 gradients in fp32, not a bf16 value."""
    w = torch.nn.Parameter(torch.randn(16, 16))
    x = torch.randn(8, 16)

    def step(grads):
        w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = (x @ w).sum()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = (x.flip(0) @ w).square().sum()
        (a + b).backward()
        grads.restore()
        return w.grad.clone()

    with bf16_grads([]) as plain:
        ref = step(plain)
    with bf16_grads([w]) as grads:
        first = step(grads)
        assert "not a bf16 value" in caplog.text and grads.handles == []
        assert torch.equal(first, ref.bfloat16().float()) and not torch.equal(first, ref)
        assert torch.equal(step(grads), ref)  # fp32 from then on


def test_only_lora_weights_of_exact_runs_are_held():
    model = ACEStepTransformer2DModel(**tiny_transformer_config())
    setup = add_lora(model, LORA)
    ok = dict(autocast=True, compute_dtype=torch.bfloat16, accumulate=1, processes=1)
    assert len(lean_params(setup, **ok)) == len(setup.params)
    for change in ({"autocast": False}, {"compute_dtype": torch.float32}, {"accumulate": 2}, {"processes": 2}):
        assert lean_params(setup, **{**ok, **change}) == [], change
    setup.config["use_dora"] = True
    assert lean_params(setup, **ok) == []
