"""A tiny XL-shaped 1.5 checkpoint (DiT 40 wide on a 32-wide condition encoder, as XL's 2560 on 2048)
through every stage, and the refusal to train on conditioning cached with another checkpoint."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.dataset.schema import load_dataset
from acetune.models.v15 import variant
from acetune.models.v15.generate import load_lora_checked, load_pipeline
from acetune.models.v15.schema import decode


def _train_argv(checkpoint, prep, out, *extra):
    lora = out.parent / "lora_xl.json"
    lora.write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}))
    return ["--dataset_path", str(prep), "--checkpoint_dir", str(checkpoint), "--output_dir", str(out),
            "--lora_config_path", str(lora), "--precision", "32", "--device", "cpu", "--logger", "none", *extra]


def test_xl_is_detected_from_the_folder(v15_prepared, v15_xl_prepared):
    xl, small = v15_xl_prepared[0], v15_prepared[0]
    assert variant.is_xl(xl) and variant.widths(xl) == (40, 32) and variant.variant_of(xl) == "sft"
    assert not variant.is_xl(small) and variant.variant_of(small) == "turbo"


def test_xl_every_stage(v15_xl_prepared, tmp_path, capsys):
    checkpoint, prep = v15_xl_prepared
    ds, meta = load_dataset(prep)
    assert meta.checkpoint["name"] == checkpoint.name and meta.checkpoint["xl"] is True
    assert (meta.checkpoint["decoder_width"], meta.checkpoint["condition_width"]) == (40, 32)
    assert decode(ds[0], meta.storage_dtype)["encoder_states"].shape[1] == 32  # the condition encoder's width

    out = tmp_path / "out"
    assert run_command("train", _train_argv(checkpoint, prep, out, "--max_steps", "2", "--every_n_train_steps", "2",
                                            "--learning_rate", "1e-3", "--warmup_steps", "1")) == 0
    printed = capsys.readouterr().out
    assert "recipe: logit_normal t (mu -0.4, sigma 1.0), cfg dropout 0.15 (sft checkpoint)" in printed
    step = out / "step-000002"
    config = json.loads((step / "train_config.json").read_text())
    assert config["v15_recipe"] == {"timestep_sampling": "logit_normal", "cfg_dropout": 0.15, "mu": -0.4, "sigma": 1.0,
                                    "variant": "sft"}
    trained = load_file(str(step / "pytorch_lora_weights.safetensors"))
    assert trained["layers.0.cross_attn.to_q.lora_A.weight"].shape == (4, 40)  # adapters sit on the 40-wide DiT

    assert run_command("export", ["--input_name", str(step), "--output_name", str(tmp_path / "diffusers")]) == 0
    pipe = load_pipeline(checkpoint)
    assert load_lora_checked(pipe, tmp_path / "diffusers" / "pytorch_lora_weights.safetensors") == len(trained)
    comfy = tmp_path / "xl.safetensors"
    assert run_command("export", ["--input_name", str(step), "--format", "comfyui", "--output_name", str(comfy)]) == 0
    assert load_file(str(comfy))["base_model.model.layers.0.cross_attn.q_proj.lora_A.weight"].shape == (4, 40)

    wav_path = tmp_path / "xl.wav"
    assert run_command("generate", ["--checkpoint_dir", str(checkpoint), "--prompt", "dark synthwave",
                                    "--duration", "1", "--steps", "2", "--seed", "0", "--lora", str(comfy),
                                    "--output", str(wav_path), "--device", "cpu"]) == 0
    from acetune.audio.io import audio_read

    wav = audio_read(wav_path, 48000)
    assert wav.shape == (2, 48000) and torch.isfinite(wav).all() and wav.abs().max() > 0


def test_a_dataset_cached_with_another_checkpoint_is_refused(v15_prepared, v15_xl_prepared, tmp_path, capsys):
    (small, small_prep), (xl, xl_prep) = v15_prepared, v15_xl_prepared
    for checkpoint, prep, cached_with in ((small, xl_prep, xl), (xl, small_prep, small)):
        assert run_command("train", _train_argv(checkpoint, prep, tmp_path / "out", "--max_steps", "1")) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"preprocessed with {cached_with.name} (" in err[0] and f"this checkpoint is {checkpoint.name} (" in err[0]
    assert not (tmp_path / "out").exists()
