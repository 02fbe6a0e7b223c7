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


class Echo(torch.nn.Module):
    """Predicts its noisy input and records the condition it was given."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.seen = {}

    def forward(self, hidden_states, encoder_hidden_states, timestep, **kw):
        self.seen.update(states=encoder_hidden_states, t=timestep)
        return (hidden_states,)


def test_loss_is_the_plain_mean_padding_included():
    # the official step ignores both masks: a padded batch is scored on its zero padding as well
    rows = [{"latents": torch.randn(3, 5), "encoder_states": torch.randn(4, 2)},
            {"latents": torch.randn(3, 2), "encoder_states": torch.randn(1, 2)}]
    batch = objective.collate(rows)
    noise, t = torch.randn(2, 3, 5), torch.tensor([0.75, 0.3])
    out = objective.flow_matching_loss(Echo(), batch, torch.zeros(1, 10, 3), noise=noise.clone(), t=t)
    x0, n = batch["target_latents"].transpose(1, 2), noise.transpose(1, 2)
    t_ = t[:, None, None]
    want = torch.nn.functional.mse_loss(t_ * n + (1 - t_) * x0, n - x0)
    torch.testing.assert_close(out.loss, want)


def test_default_recipe_per_variant():
    assert objective.default_recipe("turbo") == objective.Recipe("discrete", 0.0)
    for variant in ("base", "sft"):
        assert objective.default_recipe(variant) == objective.Recipe("logit_normal", 0.15, -0.4, 1.0)


def test_logit_normal_draws_are_the_max_of_two_shifted_sigmoids():
    gen = torch.Generator().manual_seed(3)
    t = objective.sample_logit_normal(20000, gen)
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(20000, generator=gen), torch.randn(20000, generator=gen)
    torch.testing.assert_close(t, torch.maximum(torch.sigmoid(a - 0.4), torch.sigmoid(b - 0.4)), rtol=0, atol=0)
    # the max of two draws sits above one draw's median sigmoid(-0.4) = 0.401 for 3 in 4 samples
    assert abs((t > torch.sigmoid(torch.tensor(-0.4))).float().mean().item() - 0.75) < 0.02


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


def test_cfg_dropout_replaces_whole_rows_with_the_null_embedding():
    rows = [{"latents": torch.randn(3, 4), "encoder_states": torch.randn(4, 2)} for _ in range(400)]
    batch = objective.collate(rows)
    null = torch.tensor([[[7.0, -7.0]]])
    model = Echo()
    recipe = objective.default_recipe("sft")
    objective.flow_matching_loss(model, batch, torch.zeros(1, 10, 3), null_condition=null, recipe=recipe,
                                 generator=torch.Generator().manual_seed(0))
    states = model.seen["states"]
    dropped = (states == null).flatten(1).all(1)
    kept = (states == batch["encoder_text_hidden_states"]).flatten(1).all(1)
    assert torch.all(dropped ^ kept)  # each row is either all null or untouched
    # the dropout uniforms are the first draw, before the noise and t
    want = torch.rand(400, generator=torch.Generator().manual_seed(0)) < 0.15
    assert torch.equal(dropped, want) and 30 < int(want.sum()) < 90
    # the turbo recipe draws no dropout (t from its table), and a pinned t turns dropout off
    objective.flow_matching_loss(model, batch, torch.zeros(1, 10, 3), null_condition=null,
                                 recipe=objective.default_recipe("turbo"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.seen["states"], batch["encoder_text_hidden_states"])
    assert set(model.seen["t"].tolist()) <= {float(torch.tensor(v)) for v in objective.TURBO_SHIFT3_TIMESTEPS}
    objective.flow_matching_loss(model, batch, torch.zeros(1, 10, 3), null_condition=null, recipe=recipe,
                                 t=torch.full((400,), 0.75))
    assert torch.equal(model.seen["states"], batch["encoder_text_hidden_states"])
