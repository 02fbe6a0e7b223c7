"""The training step against the golden fork step, plus the LoRA setup and batch building it relies on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from acetune.lora.keys import ADAPTER_CONFIG_FILE, LORA_WEIGHTS_FILE
from acetune.models.v1.family import FAMILY
from acetune.models.v1.transformer import ACEStepTransformer2DModel, tiny_transformer_config
from acetune.parity.registry import load_case_modules, run_case
from acetune.training.data import ConditionDropout, LyricCache, Sample, make_batch
from acetune.training.lora import add_lora, init_lora_from_file, lora_scale, touches_lyric_encoder
from golden_checks import assert_rows_pass

LORA = {"r": 4, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def test_v1_train_step_matches_golden(golden):
    """Both golden cases: loss terms abs 1e-5, model output rel 1e-5, all 44 LoRA gradients rel 1e-4."""
    assert "v1_train_step" in load_case_modules()
    rows = assert_rows_pass(run_case("v1_train_step", golden))
    grads = [r for r in rows if r.tensor.startswith("grad.")]
    assert len(grads) == 2 * 44
    assert {r.case for r in rows} == {"v1_train_step:saved", "v1_train_step:full", "v1_train_step:latent_pad"}


def _tiny(dtype=torch.float32, seed=0) -> ACEStepTransformer2DModel:
    torch.manual_seed(seed)
    return ACEStepTransformer2DModel(**tiny_transformer_config()).to(dtype)


def test_only_lora_trainable_and_fp32_over_bf16():
    model = _tiny(torch.bfloat16)
    setup = add_lora(model, LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == setup.names and len(trainable) == 2 * 16  # 2 blocks x 2 attentions x 4 modules
    assert all(".lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in setup.params)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if not p.requires_grad)
    assert not touches_lyric_encoder(model)
    assert set(setup.lora_state(model)) == {n.replace(".lora_adapter", "") for n in trainable}


def test_train_lyrics_embedder_makes_lyric_path_trainable():
    model = _tiny()
    setup = add_lora(model, LORA, train_lyrics_embedder=True)
    assert setup.embedder_names and all(n.startswith(("lyric_embs", "lyric_encoder", "lyric_proj"))
                                        for n in setup.embedder_names)
    assert touches_lyric_encoder(model)


def test_init_lora_reproduces_the_delta_under_another_scale(tmp_path):
    from safetensors.torch import save_file

    src = _tiny(seed=1)
    src_setup = add_lora(src, {**LORA, "lora_alpha": 8}, adapter_name="a")
    with torch.no_grad():
        for p in src_setup.params:
            p.normal_()
    save_file(src_setup.lora_state(src), str(tmp_path / LORA_WEIGHTS_FILE))
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps({**LORA, "lora_alpha": 8}))

    dst = _tiny(seed=1)
    setup = add_lora(dst, LORA)  # scale 0.5 instead of 4
    assert init_lora_from_file(dst, tmp_path, setup) == 16
    a_src = dict(src.named_parameters())
    a_dst = dict(dst.named_parameters())
    mod = "transformer_blocks.0.attn.to_q"
    delta_src = lora_scale({**LORA, "lora_alpha": 8}) * a_src[f"{mod}.lora_B.a.weight"] @ a_src[f"{mod}.lora_A.a.weight"]
    delta_dst = lora_scale(LORA) * a_dst[f"{mod}.lora_B.lora_adapter.weight"] @ a_dst[f"{mod}.lora_A.lora_adapter.weight"]
    torch.testing.assert_close(delta_dst, delta_src, rtol=1e-5, atol=1e-6)

    # a ComfyUI-style file (diffusion_model. prefix, .alpha, no adapter_config) is read too
    comfy = {f"diffusion_model.{k}": v for k, v in src_setup.lora_state(src).items()}
    comfy.update({f"diffusion_model.{m}.alpha": torch.tensor(4.0 * 2) for m in {k.rsplit(".", 2)[0] for k in
                                                                              src_setup.lora_state(src)}})
    (tmp_path / "c").mkdir()
    save_file(comfy, str(tmp_path / "c" / "x.safetensors"))
    init_lora_from_file(dst, tmp_path / "c" / "x.safetensors", setup)
    delta = lora_scale(LORA) * a_dst[f"{mod}.lora_B.lora_adapter.weight"] @ a_dst[f"{mod}.lora_A.lora_adapter.weight"]
    torch.testing.assert_close(delta, 2.0 * a_src[f"{mod}.lora_B.a.weight"] @ a_src[f"{mod}.lora_A.a.weight"],
                               rtol=1e-5, atol=1e-6)


def _samples() -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (frames, lyrics) in enumerate([(6, 5), (9, 3)]):
        out.append(Sample(key=f"s{i}", latents=torch.randn(8, 16, frames, generator=g),
                          text_embeds=torch.randn(3, 4 + i, 32, generator=g), text_mask=torch.ones(3, 4 + i),
                          lyric_ids=torch.randint(1, 100, (lyrics,), generator=g), lyric_mask=torch.ones(lyrics),
                          speaker=torch.randn(16, generator=g)))
    return out


def test_make_batch_pads_masks_and_drops_conditions():
    samples = _samples()
    batch = make_batch(samples, variant=2)
    assert batch["target_latents"].shape == (2, 8, 16, 9)
    assert batch["attention_mask"].tolist()[0] == [1.0] * 6 + [0.0] * 3
    assert batch["encoder_text_hidden_states"].shape == (2, 5, 32)
    torch.testing.assert_close(batch["encoder_text_hidden_states"][0, :4], samples[0].text_embeds[2])
    assert batch["text_attention_mask"][0].tolist() == [1, 1, 1, 1, 0]
    assert batch["lyric_mask"][1].tolist() == [1, 1, 1, 0, 0]

    dropped = make_batch(samples, dropout=ConditionDropout(1.0, 1.0, 1.0))
    assert dropped["encoder_text_hidden_states"].abs().sum() == 0 and dropped["speaker_embeds"].abs().sum() == 0
    assert dropped["lyric_token_idx"].abs().sum() == 0 and dropped["lyric_mask"].abs().sum() == 0
    assert dropped["text_attention_mask"].sum() == 9  # the text mask is kept, as upstream
    kept = make_batch(samples, dropout=ConditionDropout.off(), variant=0)
    torch.testing.assert_close(kept["speaker_embeds"], torch.stack([s.speaker for s in samples]))


def test_lyric_cache_gives_the_same_loss():
    """Cached lyric-encoder output (kept and dropped lyrics) == running the encoder, dropout 0."""
    model = _tiny()
    add_lora(model, LORA)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    samples = _samples()
    cache = LyricCache()
    cache.fill(model, samples, torch.device("cpu"), torch.float32)
    assert len(cache) == 2
    for p_lyrics in (0.0, 1.0):
        losses = []
        for use_cache in (False, True):
            torch.manual_seed(5)
            batch = make_batch(samples, variant=1, dropout=ConditionDropout(0.0, 0.0, p_lyrics),
                               lyric_cache=cache if use_cache else None)
            terms = FAMILY.training_loss(model, batch, shift=3.0, ssl_coeff=1.0)
            losses.append(terms.loss.item())
        assert math.isclose(losses[0], losses[1], rel_tol=1e-5), (p_lyrics, losses)


@pytest.mark.parametrize("use_ssl", [False, True])
def test_prepare_for_training_frees_weights(use_ssl):
    model = _tiny()
    before = sum(p.numel() for p in model.parameters())
    freed = FAMILY.prepare_for_training(model, use_ssl=use_ssl, drop_lyric_path=True)
    after = sum(p.numel() for p in model.parameters())
    assert before - after == sum(freed.values())
    assert freed["cross_attn.add_*"] == 2 * 4 * (64 * 64 + 64)
    assert ("projectors" in freed) != use_ssl
