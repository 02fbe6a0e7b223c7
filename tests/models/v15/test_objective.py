"""The 1.5 objective and key mapping against the official trainer's constants and diffusers' converter."""

from __future__ import annotations

import torch

from acetune.models.v15 import adapters, objective


def test_turbo_table_is_the_shift3_schedule():
    # official trainer TURBO_SHIFT3_TIMESTEPS == AceStepPipeline's 8-step shift-3 schedule
    table = torch.tensor(objective.TURBO_SHIFT3_TIMESTEPS, dtype=torch.float64)
    torch.testing.assert_close(objective.shifted_schedule(8, 3.0), table, rtol=0, atol=1e-15)


def test_sampled_timesteps_come_from_the_table():
    t = objective.sample_timesteps(4000, torch.Generator().manual_seed(0))
    values, counts = torch.unique(t, return_counts=True)
    assert set(values.tolist()) == {float(torch.tensor(v, dtype=torch.float32)) for v in objective.TURBO_SHIFT3_TIMESTEPS}
    assert counts.min() > 400  # uniform over 8 values: 500 each on average


def test_normal_draw_maps_to_shifted_sigmoid():
    assert objective.timestep_from_normal(torch.zeros(1)).item() == 0.75  # v1's median timestep


def test_context_latents_tile_silence_then_ones():
    silence = torch.arange(12.0).reshape(1, 3, 4)
    ctx = objective.context_latents(silence, 7)
    assert ctx.shape == (7, 8)
    torch.testing.assert_close(ctx[3:6, :4], silence[0])
    assert torch.all(ctx[:, 4:] == 1)


def test_masked_loss_matches_official_mse_at_batch_one():
    class Echo(torch.nn.Module):  # predicts its input: loss = mse(xt, noise - x0)
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, hidden_states, **kw):
            return (hidden_states,)

    rows = [{"latents": torch.randn(3, 5), "encoder_states": torch.randn(4, 2)}]
    batch = objective.collate(rows)
    noise, t = torch.randn(1, 3, 5), torch.tensor([0.75])
    out = objective.flow_matching_loss(Echo(), batch, torch.zeros(1, 10, 3), noise=noise.clone(), t=t)
    x0, noise = rows[0]["latents"].T[None], noise.transpose(1, 2)
    want = torch.nn.functional.mse_loss(0.75 * noise + 0.25 * x0, noise - x0)
    torch.testing.assert_close(out.loss, want)


def test_comfyui_names_are_what_diffusers_converts_back():
    from diffusers import AceStepPipeline

    # diffusers converts a file when some key names q_proj or k_proj (the default targets always do)
    state = {"layers.0.cross_attn.to_q.lora_A.weight": torch.ones(2, 4),
             "layers.0.self_attn.to_out.0.lora_A.weight": torch.ones(2, 4),
             "layers.0.self_attn.to_out.0.lora_B.weight": torch.ones(4, 2),
             "layers.1.mlp.gate_proj.lora_A.weight": torch.ones(2, 4)}
    config = adapters.adapter_config("lora", rank=2, alpha=8.0)
    comfy = adapters.comfyui_state(state, config)
    assert set(comfy) == {"base_model.model.layers.0.cross_attn.q_proj.lora_A.weight",
                          "base_model.model.layers.0.self_attn.o_proj.lora_A.weight",
                          "base_model.model.layers.0.self_attn.o_proj.lora_B.weight",
                          "base_model.model.layers.1.mlp.gate_proj.lora_A.weight"}
    torch.testing.assert_close(comfy["base_model.model.layers.0.self_attn.o_proj.lora_A.weight"],
                               torch.full((2, 4), 2.0))  # sqrt(alpha / r) = 2 on each factor
    back = AceStepPipeline.lora_state_dict(dict(comfy))
    assert set(back) == {f"transformer.{k}" for k in state}


def test_dropped_condition_becomes_the_null_embedding():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, hidden_states, encoder_hidden_states, **kw):
            seen["states"] = encoder_hidden_states
            return (hidden_states,)

    rows = [{"latents": torch.randn(3, 5), "encoder_states": torch.randn(4, 2)},
            {"latents": torch.randn(3, 5), "encoder_states": torch.randn(4, 2)}]
    batch = objective.collate(rows)
    batch["encoder_text_hidden_states"][1] = 0.0  # what the shared loader's text dropout does
    null = torch.tensor([[[7.0, -7.0]]])
    objective.flow_matching_loss(Spy(), batch, torch.zeros(1, 10, 3), null_condition=null)
    torch.testing.assert_close(seen["states"][0], rows[0]["encoder_states"])
    assert torch.all(seen["states"][1] == null[0])
