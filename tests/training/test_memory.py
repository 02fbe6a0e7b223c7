"""The analytic peak model (`training.memory`) and `--gradient_checkpointing auto|on|off`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acetune.models.v1.family import FAMILY
from acetune.models.v1.transformer import (
    ACEStepTransformer2DModel,
    build_transformer,
    tiny_transformer_config,
)
from acetune.training import memory, memory_trace
from acetune.training.block_checkpointing import apply_checkpointing, normalise_mode
from acetune.training.lora import add_lora

LORA = {"r": 4, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
LORA64 = {**LORA, "r": 64}


def _v1_batch(cfg, frames: int = 40, seconds: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"target_latents": torch.randn(1, 8, 16, frames, generator=g), "attention_mask": torch.ones(1, frames),
            "encoder_text_hidden_states": torch.randn(1, 5, cfg.text_embedding_dim, generator=g),
            "text_attention_mask": torch.ones(1, 5), "speaker_embeds": torch.randn(1, cfg.speaker_embedding_dim, generator=g),
            "lyric_token_idx": torch.randint(1, 100, (1, 12), generator=g), "lyric_mask": torch.ones(1, 12),
            "ssl_hidden_states": [[torch.randn(seconds * hz, d, generator=g)]
                                  for hz, d in zip(memory_trace.V1_SSL_HZ, cfg.ssl_latent_dims)]}


def _v1_loss_and_grads(checkpointed: int, **levers):
    torch.manual_seed(0)
    model = ACEStepTransformer2DModel(**tiny_transformer_config())
    setup = add_lora(model, LORA)
    for p in setup.params:  # non-zero B so every LoRA tensor gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    apply_checkpointing(model.train(), checkpointed, **levers)
    batch = _v1_batch(model.config)
    loss = FAMILY.training_loss(model, batch, noise=torch.randn_like(batch["target_latents"]), u=torch.zeros(1)).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in setup.params], model


def test_checkpointing_some_blocks_gives_identical_loss_and_grads(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    ref_loss, ref_grads, model = _v1_loss_and_grads(2)  # on: both blocks (+ lyric layers, SSL heads)
    on_calls = len(calls)
    assert model.gradient_checkpointing and on_calls >= 2
    for k in (1, 0):
        calls.clear()
        loss, grads, model = _v1_loss_and_grads(k)
        assert torch.equal(loss, ref_loss) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads)), k
        assert len(calls) == (on_calls - 1 if k == 1 else 0)  # one block fewer, or nothing at all


def test_checkpointing_inside_blocks_and_offloading_their_inputs_give_identical_loss_and_grads(monkeypatch):
    """`--gradient_checkpointing fine` (each block's parts recomputed on their own) and `--activation_offload`
    (forced on the CPU here: the saved inputs are copied to host tensors and back): bit for bit as `on`."""
    ref_loss, ref_grads, _ = _v1_loss_and_grads(2)
    calls, copies = [], []
    real, real_offload = torch.utils.checkpoint.checkpoint, torch.autograd.graph.save_on_cpu
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", lambda **k: copies.append(k) or real_offload(**k))
    # offloaded: the 2 blocks' and the 2 Conformer layers' inputs (the lyric path is not cached here)
    for levers, parts, offloads in (({"inside": True}, 3, 0), ({"offload_inputs": True}, 0, 4),
                                    ({"inside": True, "offload_inputs": True}, 3, 4)):
        calls.clear(), copies.clear()
        loss, grads, model = _v1_loss_and_grads(2, **levers)
        assert torch.equal(loss, ref_loss) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads)), levers
        inner = [fn for fn in calls if getattr(fn, "__name__", "") in
                 ("self_attention_part", "cross_attention_part", "feed_forward_in")]
        # the three parts of each block, in its first forward and again in its recompute
        assert len(inner) == 2 * 2 * parts and len(copies) == offloads, levers


def test_15_checkpointing_some_blocks_gives_identical_grads():
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config as tiny15

    def run(k):
        torch.manual_seed(0)
        model = AceStepTransformer1DModel(**{**tiny15(), "num_hidden_layers": 3}).train()
        apply_checkpointing(model, k)
        g = torch.Generator().manual_seed(1)
        cfg = model.config
        out = model(hidden_states=torch.randn(1, 16, cfg.audio_acoustic_hidden_dim, generator=g),
                    timestep=torch.tensor([0.5]), timestep_r=torch.tensor([0.5]),
                    encoder_hidden_states=torch.randn(1, 7, cfg.hidden_size, generator=g),
                    context_latents=torch.randn(1, 16, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=g),
                    return_dict=False)[0]
        out.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    ref = run(3)
    for k in (2, 1, 0):
        assert all(torch.equal(a, b) for a, b in zip(run(k), ref)), k


def test_mode_aliases():
    assert [normalise_mode(v) for v in ("auto", "ON", "off", "true", "False", True, False)] == \
        ["auto", "on", "off", "on", "off", "on", "off"]


def _official_v1(seconds: float):
    model = build_transformer({})  # meta
    model.drop_unused_projections()
    model.to(torch.bfloat16)
    model.lyric_embs = model.lyric_encoder = model.lyric_proj = None  # cached lyric states
    profile = memory.profile_for(model, seconds, lora_config=LORA64)
    clone = memory.meta_copy(model)
    setup = add_lora(clone, LORA64, lora_dtype=torch.float32)
    return profile, setup, clone


def test_policy_official_config_10s_on_24gb_checkpoints_nothing_and_a_smaller_budget_some():
    profile, setup, clone = _official_v1(10)
    static = memory.static_terms(clone, setup.params, "adamw")
    peak, fits = memory.choose_checkpointed(static, profile, 24e9, memory.CUDA_WORKSPACE)
    assert fits and peak.checkpointed == 0 and peak.total < 24e9
    # 6.5 GB (between all-on 6.2 and all-off 7.1 on the CPU): the fewest blocks that fit
    peak, fits = memory.choose_checkpointed(static, profile, 6.5e9)
    k = peak.checkpointed
    assert fits and 0 < k < 24 and memory.estimate(static, profile, k - 1).total > 6.5e9 >= peak.total


def test_policy_checks_inside_blocks_after_all_blocks():
    profile = memory_trace.ActivationProfile(blocks=4, batch=10, outside=100, block_full=1000, block_checkpointed=10,
                                             block_largest=50, block_inside=600)
    static = memory.Static(weights=5000, trainable=40, grads=40, states=80)
    on, fine = memory.estimate(static, profile), memory.estimate(static, profile, inside=True)
    assert on.total - fine.total == 1000 + 3 * 50 - 600 and fine.inside and not on.inside
    peak, fits = memory.choose_checkpointed(static, profile, fine.total)
    assert fits and (peak.checkpointed, peak.inside) == (4, True)
    assert memory.choose_checkpointed(static, profile, fine.total, inside_allowed=False) == (on, False)
    assert memory.choose_checkpointed(static, profile, fine.total - 1)[1] is False
    offloaded = memory.estimate(static, profile, inside=True, offload_inputs=True)
    assert fine.total - offloaded.total == 4 * 10 and offloaded.host == {"checkpointed block inputs": 40}


def test_the_plan_traces_only_with_a_budget(monkeypatch):
    """Without --memory_budget_gb nothing is traced (no meta-device call of the loss): the summary gives the
    exact weights and trained state; a budget traces and decides (here: fine, inside every block)."""
    from types import SimpleNamespace

    model = ACEStepTransformer2DModel(**tiny_transformer_config()).to(torch.bfloat16)
    model.drop_unused_projections()
    setup = add_lora(model, LORA)
    args = SimpleNamespace(gradient_checkpointing="auto", memory_budget_gb=0, optimizer="adamw", int8=False,
                           optimizer_offload=False, full=False, adapter="lora", batch_size=1, precision="bf16-mixed",
                           accumulate_grad_batches=1, activation_offload=False, compile=False)
    rows = {"duration": [20.0]}
    traced = []
    real = memory.profile_for
    monkeypatch.setattr(memory, "profile_for", lambda *a, **k: traced.append(a) or real(*a, **k))
    k, lines = memory.plan_checkpointing(args, model, setup, rows, lora_config=LORA, use_ssl=True,
                                         device=torch.device("cpu"))
    static = memory.static_terms(model, setup.params, "adamw", grad_dtype=torch.bfloat16)
    assert traced == [] and k == 2 and model.gradient_checkpointing
    assert lines == [f"  gradient checkpointing: all blocks (auto); weights + trained state "
                     f"{(static.weights + static.trainable + static.grads + static.states) / 1e9:.2f} GB "
                     "(--memory_budget_gb N estimates the activations too)"]
    profile = memory.profile_for(model, 20.0, lora_config=LORA)
    fine = memory.estimate(static, profile, inside=True)
    args.memory_budget_gb = fine.total / 1e9
    k, lines = memory.plan_checkpointing(args, model, setup, rows, lora_config=LORA, use_ssl=True,
                                         device=torch.device("cpu"))
    assert len(traced) == 2 and k == 2 and all(b.checkpoint_inside for b in model.transformer_blocks)
    assert "all blocks and their parts (auto, budget" in lines[0] and f"{fine.total / 1e9:.2f} GB" in lines[0]


def test_policy_picks_the_fewest_blocks_that_fit():
    profile = memory_trace.ActivationProfile(blocks=24, batch=10, outside=100, block_full=1000, block_checkpointed=10,
                                             block_largest=50, heads=300, heads_largest=20)
    static = memory.Static(weights=5000, trainable=40, grads=40, states=80)
    totals = [memory.estimate(static, profile, k).total for k in range(25)]
    assert totals == sorted(totals, reverse=True)[:1] + totals[1:] and totals[0] > totals[1] > totals[-1]
    for budget, want in ((1e9, 0), (totals[0], 0), (totals[0] - 1, 1), (totals[5], 5), (totals[5] + 1, 5),
                         (totals[24], 24)):
        peak, fits = memory.choose_checkpointed(static, profile, budget)
        assert (peak.checkpointed, fits) == (want, True), budget
    peak, fits = memory.choose_checkpointed(static, profile, totals[24] - 1)
    assert (peak.checkpointed, fits) == (24, False)


def test_block_decomposition_equals_a_direct_trace():
    """profile.saved(k) (two traces, composed) vs tracing the model with k blocks checkpointed: exact with all
    checkpointed; otherwise within 5% (a lone block's trace counts tensors the blocks share, such as the rotary
    tables and the timestep modulation, as its own; on the tiny config they weigh more than on real ones)."""
    model = ACEStepTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 3})
    model = memory.meta_copy(model)
    add_lora(model, LORA)
    model.lyric_embs = model.lyric_encoder = model.lyric_proj = None
    profile = memory_trace.v1_profile(model, 20)
    b = _meta_batch(model, 20)
    params = memory_trace.param_ids(model)
    got = {}
    for k in (0, 1, 3):
        apply_checkpointing(model, k)
        got[k] = memory_trace.saved_bytes(lambda: FAMILY.training_loss(
            model, b, noise=torch.zeros_like(b["target_latents"]), u=torch.zeros(1)), params)[0]
    assert got[3] == profile.saved(3)
    assert all(abs(profile.saved(k) - got[k]) <= 0.05 * got[k] for k in (0, 1)), (got, [profile.saved(k) for k in got])


def test_15_block_decomposition_is_close_to_a_direct_trace():
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config as tiny15

    model = memory.meta_copy(AceStepTransformer1DModel(**{**tiny15(), "num_hidden_layers": 3}))
    add_lora(model, LORA)
    profile = memory_trace.v15_profile(model, 20)
    assert profile.blocks == 3 and profile.block_largest > 0
    _, loss = memory_trace.v15_step(model, 20)
    params = memory_trace.param_ids(model)
    for k in (0, 1, 3):
        apply_checkpointing(model, k)
        got = memory_trace.saved_bytes(loss, params)[0]
        assert abs(profile.saved(k) - got) <= 0.05 * got, (k, got, profile.saved(k))


def _meta_batch(model, seconds):
    cfg = model.config
    frames = int(seconds * memory_trace.V1_LATENT_HZ)
    real = _v1_batch(cfg, frames, seconds)
    out = {k: v.to("meta").to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else
           v.to("meta") if torch.is_tensor(v) else v for k, v in real.items()}
    out["ssl_hidden_states"] = [[z.to("meta", torch.bfloat16) for z in zs] for zs in real["ssl_hidden_states"]]
    out["lyric_hidden_states"] = torch.zeros(1, memory_trace.LYRIC_TOKENS, model.inner_dim, device="meta",
                                             dtype=torch.bfloat16)
    out["lyric_token_idx"] = torch.zeros(1, memory_trace.LYRIC_TOKENS, dtype=torch.long, device="meta")
    out["lyric_mask"] = torch.zeros(1, memory_trace.LYRIC_TOKENS, device="meta", dtype=torch.bfloat16)
    out["encoder_text_hidden_states"] = torch.zeros(1, memory_trace.TEXT_TOKENS, cfg.text_embedding_dim,
                                                    device="meta", dtype=torch.bfloat16)
    out["text_attention_mask"] = torch.zeros(1, memory_trace.TEXT_TOKENS, device="meta", dtype=torch.bfloat16)
    return out


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "adafactor", "prodigy"])
def test_optimizer_state_bytes_match_a_real_optimizer(name):
    """The state-size formula == the bytes a real optimizer holds after one step (LoRA-like shapes)."""
    from acetune.training.optim import build_optimizer

    params = [torch.nn.Parameter(torch.randn(s)) for s in ((8, 96), (96, 8), (64, 128), (33,))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = build_optimizer(params, name, lr=1e-3)
    opt.step()
    held = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.numel() > 1)
    assert held == memory.optimizer_state_bytes(params, name)


def test_estimate_rows_and_offload():
    profile = memory_trace.ActivationProfile(blocks=2, batch=1, outside=2, block_full=30, block_checkpointed=3,
                                             block_largest=4)
    static = memory.Static(weights=100, trainable=10, grads=10, states=20, offload=True)
    peak = memory.estimate(static, profile, None)
    assert peak.total == 100 + 10 + 10 + 1 + (2 + 2 * 3) + (30 + 12) and peak.host == {"optimizer states": 20}
    assert dataclasses.replace(static, offload=False) and memory.estimate(
        dataclasses.replace(static, offload=False), profile).total == peak.total + 20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_fixtures import make_checkpoint, make_dataset

    base = tmp_path_factory.mktemp("memory")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint, ssl=True)


@pytest.mark.parametrize("extra", [["--memory_budget_gb", "100"], ["--full", "--gradient_checkpointing", "true"]])
def test_8bit_offload_run_prints_the_plan_and_resumes_bitwise(tiny_run, tmp_path, monkeypatch, capsys, extra):
    """adamw8bit + --optimizer_offload (LoRA with a budget that needs no checkpointing; a full fine-tune with
    the old `true`): stopped after step 2 and resumed == the uninterrupted run, bit for bit."""
    from safetensors.torch import load_file
    from train_fixtures import train_argv

    from acetune.cli import run_command
    from acetune.training import checkpoint as ckpt
    from acetune.training import loop

    checkpoint, data = tiny_run
    flags = ["--max_steps", "4", "--every_n_train_steps", "2", "--optimizer", "adamw8bit", "--optimizer_offload",
             *extra]
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "ref", *flags)) == 0
    printed = capsys.readouterr().out
    plan = next(line for line in printed.splitlines() if "gradient checkpointing:" in line)
    budget = "--memory_budget_gb" in extra
    assert ("off (auto, budget 100 GB)" if budget else "all blocks (on)") in plan
    assert ("estimated peak" if budget else "weights + trained state") in plan
    steps = {"n": 0}
    monkeypatch.setattr(loop, "stop_requested", lambda: steps.__setitem__("n", steps["n"] + 1) or steps["n"] >= 2)
    run_command("train", train_argv(data, checkpoint, tmp_path / "run", *flags))
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")][-1] == 2
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "run", *flags, "--resume")) == 0
    name = ckpt.FULL_WEIGHTS_FILE if "--full" in extra else ckpt.LORA_WEIGHTS_FILE
    ref, got = (load_file(str(tmp_path / r / "step-000004" / name)) for r in ("ref", "run"))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
