"""Training-step speed levers (issue 21) change no numbers: lean casts are bit-identical, `--compile`
matches eager to float32 rounding, and neither touches parameter or LoRA key names."""

from __future__ import annotations

import pytest
import torch

from acetune.lora.keys import saved_lora_state_dict
from acetune.models.v1.attention import LinearSelfAttention
from acetune.parity import transformer as parity
from acetune.training.compiled import compile_blocks, transformer_blocks, uncompile_blocks
from acetune.training.lora import add_lora, lora_input_casting

LORA = {"r": 8, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def lora_model(golden, dtype: torch.dtype):
    """The golden tiny transformer with an rsLoRA whose B is non-zero (so the adapter changes the output)."""
    model = parity.tiny_model(golden / "v1_transformer_tiny", dtype=dtype)
    setup = add_lora(model, LORA, lora_dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in zip(setup.names, setup.params):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.train(), setup


def step(model, setup, inputs, dtype):
    """Forward under autocast (as the trainer, with peft's input cast off), loss, backward -> outputs and grads."""
    for p in setup.params:
        p.grad = None
    torch.manual_seed(0)  # the Conformer's dropout (train mode)
    with lora_input_casting(model, enabled=dtype == torch.float32), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        out = model(**inputs)
    loss = out.sample.float().square().mean() + sum(v.float() for _, v in out.proj_losses)
    loss.backward()
    return {"sample": out.sample.detach(), "loss": loss.detach(),
            **{n: p.grad.detach().clone() for n, p in zip(setup.names, setup.params)}}


def bf16(value):
    if isinstance(value, (list, tuple)):
        return [bf16(v) for v in value]
    return value.to(torch.bfloat16) if torch.is_tensor(value) and value.is_floating_point() else value


@pytest.fixture(scope="module")
def inputs(golden):
    return parity.load_inputs(golden / "v1_transformer_tiny" / "inputs_latent_pad.safetensors")  # padded frames too


@pytest.mark.parametrize("padded", [True, False])
def test_lean_casts_are_bit_identical_under_autocast(golden, inputs, padded, monkeypatch):
    """Dropping the fp32 round trip of q, k, v gives the same bits: sample, losses and every LoRA gradient."""
    model, setup = lora_model(golden, torch.bfloat16)
    batch = {k: bf16(v) for k, v in inputs.items()}  # as `training.data.batch_to` hands them over
    if not padded:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    monkeypatch.setattr(LinearSelfAttention, "lean_casts", False)
    before = step(model, setup, batch, torch.bfloat16)
    monkeypatch.setattr(LinearSelfAttention, "lean_casts", True)
    after = step(model, setup, batch, torch.bfloat16)
    assert before.keys() == after.keys() and len(before) == 2 + 2 * 8 * 2  # 2 blocks x 8 adapted x (A, B)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert any(after[n].abs().sum() > 0 for n in after if ".lora_A." in n)  # the gradients reach the adapter


def test_lean_casts_follow_the_autocast_dtype():
    """Outside autocast (fp32 parity, inference in bf16 weights) the reference's fp32 path runs."""
    attn = LinearSelfAttention(16, 2, 8).to(torch.bfloat16)
    x = torch.randn(1, 5, 16, dtype=torch.bfloat16)
    from acetune.models.v1.attention import autocast_dtype, rope_tables

    assert autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(x) == torch.bfloat16
    rope = rope_tables(5, 8, 1e6)
    plain = attn(x, None, rope)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = attn(x, None, rope)
    assert plain.dtype == auto.dtype == torch.bfloat16
    assert (plain.float() - auto.float()).abs().max() < 0.05  # same math; bf16 vs fp32 matmuls


@pytest.mark.slow  # Inductor compiles C++ for a minute or more on 2 cores; --compile is opt-in
def test_compile_matches_eager_with_checkpointing_and_keeps_keys(golden, inputs):
    """`--compile` (blocks compiled in place) under gradient checkpointing and peft: outputs and LoRA gradients
    equal eager's to fp32 rounding; parameter names and saved LoRA keys are unchanged; it can be undone."""
    model, setup = lora_model(golden, torch.float32)
    model.enable_gradient_checkpointing()
    names, lora_keys = list(model.state_dict()), list(saved_lora_state_dict(model, setup.adapter_name))
    eager = step(model, setup, inputs, torch.float32)
    assert compile_blocks(model) == len(transformer_blocks(model)) == 2
    compiled = step(model, setup, inputs, torch.float32)
    assert list(model.state_dict()) == names
    assert list(saved_lora_state_dict(model, setup.adapter_name)) == lora_keys
    for name in eager:
        ref, got = eager[name], compiled[name]
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-7, name  # fusion reorders fp32 rounding
    assert uncompile_blocks(model) == 2
    assert all(block._compiled_call_impl is None for block in transformer_blocks(model))


@pytest.mark.parametrize("dim, frames", [(24, 900), (1024, 4500), (768, 3000)])
def test_ssl_loss_on_a_contiguous_copy_matches_the_transposed_view(dim, frames):
    """`ssl_projection_loss` takes the interpolated prediction as a contiguous (T, d) copy. Against the reference
    formula on the transposed view (as the fork computes it), under bf16 autocast, with 1% outliers, at the
    tiny and the medium model's 60 s sizes: the loss agrees to 1e-6 (the fp32 reductions run in another
    order), and the bf16 gradient of the prediction differs in at most 1% of its values, by at most one
    bf16 rounding step of the largest gradient."""
    import torch.nn.functional as F

    from acetune.models.v1.transformer import ssl_projection_loss

    def on_the_view(predicted, targets):
        total = 0.0
        for z_hat, z in zip(predicted, targets):
            z_hat = F.interpolate(z_hat.T[None], size=z.shape[0], mode="linear", align_corners=False)[0].T
            total = total + (1 - (F.normalize(z_hat, dim=-1) * F.normalize(z.to(z_hat.dtype), dim=-1)).sum(-1)).mean()
        return total / predicted.shape[0]

    g = torch.Generator().manual_seed(5)
    start = torch.randn(1, 646, dim, generator=g)
    start[torch.rand(start.shape, generator=g) < 0.01] *= 100  # outliers: 1% of the values 100x larger
    start = start.bfloat16()
    targets = torch.randn(1, frames, dim, generator=g)
    results = []
    for fn in (ssl_projection_loss, on_the_view):
        predicted = start.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(predicted, targets)
        loss.backward()
        results.append((loss.detach(), predicted.grad.float()))
    (loss, grad), (ref_loss, ref_grad) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=2**-7, atol=2**-8 * float(ref_grad.abs().max()))
    assert grad.ne(ref_grad).sum() <= grad.numel() // 100
    assert grad.count_nonzero() > grad.numel() // 2  # a real gradient, not zeros
