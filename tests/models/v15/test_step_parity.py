"""One training step of our 1.5 recipes against the official trainers (vectors in golden/, see its README).

Each vector holds the official step's inputs, the seeded LoRA, the global-RNG seed of the step, the
decoder inputs the official step built (x_t, t, the condition after CFG dropout), its loss and every
LoRA gradient. Our family's `training_loss` must reproduce them from the same seed: loss to 1e-6
absolute, gradients to 1e-4 relative L2 (v1's tolerances). With every condition row replaced by the
null embedding, the cross-attention q/k gradients are analytically zero (all keys are equal, so the
softmax is flat); the official values there are rounding noise, checked against an absolute bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from acetune.models.v15 import family as v15_family
from acetune.models.v15.objective import collate, default_recipe
from acetune.models.v15.tiny import tiny_transformer_config

GOLDEN = Path(__file__).parent / "golden"
LOSS_ATOL = 1e-6
GRAD_RTOL = 1e-4
ZERO_GRAD_ATOL = 1e-5  # |official| ~ 1e-7 there
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
CASES = {  # vector -> (weights, recipe variant)
    "training_v2_step": ("weights_2b", "base"),
    "training_v2_step_all_null": ("weights_2b", "sft"),
    "training_v2_step_xl": ("weights_xl", "base"),
    "turbo_step": ("weights_2b", "turbo"),
}


def _model(weights_name: str):
    from diffusers import AceStepTransformer1DModel

    weights = load_file(str(GOLDEN / f"{weights_name}.safetensors"))
    state = {k.removeprefix("transformer."): v for k, v in weights.items() if k.startswith("transformer.")}
    config = tiny_transformer_config()
    width = weights["null_condition_emb"].shape[-1]
    if width != config["hidden_size"]:
        config["encoder_hidden_size"] = width  # XL-shaped: condition encoder narrower than the decoder
    model = AceStepTransformer1DModel(**config)
    model.load_state_dict(state, strict=True)
    return model, weights["null_condition_emb"]


def _run(case: str):
    fam = v15_family.FAMILY
    weights_name, variant = CASES[case]
    vec = load_file(str(GOLDEN / f"{case}.safetensors"))
    with safe_open(str(GOLDEN / f"{case}.safetensors"), "pt") as f:
        meta = f.metadata()
    model, null = _model(weights_name)
    model.register_buffer(v15_family.SILENCE_BUFFER, vec["silence_latent"], persistent=False)
    model.register_buffer(v15_family.NULL_BUFFER, null, persistent=False)
    fam.set_recipe(model, default_recipe(variant))
    setup = fam.add_training_adapter(model, {**LORA, "r": int(meta["r"]), "lora_alpha": float(meta["lora_alpha"])})
    setup.load_lora_state(model, {k.removeprefix("lora."): v for k, v in vec.items() if k.startswith("lora.")})
    model.train()
    seen = {}
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    rows = [{"latents": x.T, "encoder_states": c} for x, c in zip(vec["target_latents"], vec["encoder_hidden_states"])]
    batch = collate(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(vec["step_seed"]))
        out = fam.training_loss(model, batch)
    out.loss.backward()
    grads = {name: p.grad for name, p in setup._ours(model).items()}
    return vec, out.loss, grads, seen, null


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_matches_the_official_trainer(case):
    vec, loss, grads, seen, _ = _run(case)
    # the draws, in the official order: the decoder saw the same x_t, t and condition
    torch.testing.assert_close(seen["timestep"], vec["seen.t"], rtol=0, atol=0)
    torch.testing.assert_close(seen["timestep_r"], vec["seen.r"], rtol=0, atol=0)
    torch.testing.assert_close(seen["hidden_states"], vec["seen.xt"], rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["encoder_hidden_states"], vec["seen.condition"], rtol=0, atol=0)
    torch.testing.assert_close(seen["context_latents"], vec["context_latents"], rtol=0, atol=0)
    assert abs(loss.item() - vec["loss"].item()) <= LOSS_ATOL
    want = {k.removeprefix("grad."): v for k, v in vec.items() if k.startswith("grad.")}
    assert set(grads) == set(want) and len(want) == 32  # 2 layers x (self + cross) x (q, k, v, o) x (A, B)
    all_null = case.endswith("all_null")
    for name, ref in want.items():
        got = grads[name]
        if all_null and ".cross_attn.to_q." in name or all_null and ".cross_attn.to_k." in name:
            assert ref.abs().max() < ZERO_GRAD_ATOL and got.abs().max() < ZERO_GRAD_ATOL, name
            continue
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel <= GRAD_RTOL, f"{name}: relative L2 {rel:.2e}"


def test_vectors_cover_both_dropout_outcomes():
    """The training_v2 vectors drop one row and keep the other (so a wrong draw order shows), and the
    all-null vector drops both."""
    for case, want in (("training_v2_step", [True, False]), ("training_v2_step_xl", [False, True]),
                       ("training_v2_step_all_null", [True, True])):
        vec = load_file(str(GOLDEN / f"{case}.safetensors"))
        null = load_file(str(GOLDEN / f"{CASES[case][0]}.safetensors"))["null_condition_emb"]
        dropped = (vec["seen.condition"] == null).flatten(1).all(1).tolist()
        assert dropped == want, case
    t = load_file(str(GOLDEN / "turbo_step.safetensors"))["seen.t"]
    from acetune.models.v15.objective import TURBO_SHIFT3_TIMESTEPS

    assert all(any(abs(v - w) < 1e-7 for w in TURBO_SHIFT3_TIMESTEPS) for v in t.tolist())
