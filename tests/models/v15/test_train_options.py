"""`acetune train` / `acetune export` options on ACE-Step 1.5: validation renders, --int8, --adapter lokr,
--init_lora, export --write_alpha and --merge. Tiny checkpoint from `conftest.v15_prepared`; a few seconds each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acetune.cli import parse_args, run_command
from acetune.models.v15 import adapters
from acetune.models.v15.generate import load_lora_checked, load_pipeline


def _argv(checkpoint: Path, prep: Path, out: Path, *extra: str, config: dict | None = None) -> list[str]:
    lora = out.parent / f"{out.name}_adapter.json"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_text(json.dumps(config or {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v",
                                                                                      "to_out.0"]}))
    return ["--dataset_path", str(prep), "--checkpoint_dir", str(checkpoint), "--output_dir", str(out),
            "--lora_config_path", str(lora), "--precision", "32", "--device", "cpu", "--logger", "none",
            "--text_dropout", "0", "--learning_rate", "1e-2", "--warmup_steps", "1", *extra]


def _fails(capsys, message: str, name: str, argv: list[str]) -> None:
    """The command exits 1 with a one-line error containing `message` (no traceback)."""
    capsys.readouterr()
    assert run_command(name, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and message in err[0], err


class Recorder:
    """A MetricsLogger that keeps what was logged."""

    def __init__(self):
        self.audio, self.images = [], []

    def log(self, metrics, step):
        pass

    def log_audio(self, name, wav, sample_rate, step):
        self.audio.append((name, tuple(wav.shape), sample_rate, step))

    def log_image(self, name, image, step):
        self.images.append((name, image.shape, step))

    def close(self):
        pass


def test_validation_renders_through_the_pipeline(v15_prepared, tmp_path):
    from acetune.audio.io import audio_read
    from acetune.stages import train
    from acetune.training.loop import fit
    from acetune.training.setup import build_run

    checkpoint, prep = v15_prepared
    out = tmp_path / "out"
    argv = _argv(checkpoint, prep, out, "--max_steps", "2", "--every_n_train_steps", "2", "--validation_prompt",
                 "dark synthwave", "--validation_lyrics", "neon rain", "--validation_duration", "1",
                 "--validation_every", "2")
    run_, _ = build_run(parse_args(train.Args, argv, "acetune train"), echo=lambda _: None)
    run_.metrics = recorder = Recorder()
    fit(run_)
    renders = {s: audio_read(out / "validation" / f"step-{s:06d}" / "0.wav", 48000) for s in (0, 2)}
    for step in (0, 2):
        folder = out / "validation" / f"step-{step:06d}"
        assert (folder / "0.png").is_file()
        assert json.loads((folder / "prompts.json").read_text())["sample_rate"] == 48000
        assert renders[step].shape == (2, 48000) and torch.isfinite(renders[step]).all()
    assert [(n, r, s) for n, _, r, s in recorder.audio] == [("validation/0", 48000, 0), ("validation/0", 48000, 2)]
    assert [(n, s) for n, _, s in recorder.images] == [("validation/0_mel", 0), ("validation/0_mel", 2)]
    # Step 0 (LoRA B = 0) is the base model's render through AceStepPipeline; step 2 hears the trained adapter.
    pipe = load_pipeline(checkpoint)
    base = pipe(prompt="dark synthwave", lyrics="neon rain", audio_duration=1.0, num_inference_steps=8,
                guidance_scale=1.0, generator=torch.Generator().manual_seed(42)).audios[0].float()
    torch.testing.assert_close(renders[0], base, atol=1e-4, rtol=0)  # 16-bit wav quantization
    assert (renders[2] - renders[0]).abs().max() > 1e-3


def test_int8_trains(v15_prepared, tmp_path, capsys):
    checkpoint, prep = v15_prepared
    out = tmp_path / "out"
    argv = _argv(checkpoint, prep, out, "--max_steps", "2", "--int8", "--validation_prompt", "x",
                 "--validation_duration", "1")
    assert run_command("train", argv) == 0
    text = capsys.readouterr().out
    assert "int8 base weights" in text and "done: step 2" in text
    assert (out / "validation" / "step-000000" / "0.wav").is_file()  # the pipeline renders with the int8 DiT
    model = _build(_argv(checkpoint, prep, tmp_path / "again", "--int8")).model
    assert sum(type(m).__name__ == "QLinear" for m in model.layers.modules()) == 2 * (8 + 3)  # attn + MLP
    state = load_file(str(out / "step-000002" / "pytorch_lora_weights.safetensors"))
    assert len(state) == 32 and all(torch.isfinite(v).all() for v in state.values())
    assert any(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)


def test_lokr_train_resume_export_generate(v15_prepared, tmp_path, capsys):
    checkpoint, prep = v15_prepared
    out = tmp_path / "out"
    config = {"r": 4, "alpha": 8, "decompose_factor": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    argv = _argv(checkpoint, prep, out, "--adapter", "lokr", "--max_steps", "2", "--every_n_train_steps", "1",
                 config=config)
    assert run_command("train", argv) == 0
    step = out / "step-000002"
    state = load_file(str(step / "pytorch_lora_weights.safetensors"))
    assert state and all(".lokr_w" in k for k in state) and len(state) == 2 * 4 * 2 * 2
    saved = json.loads((step / "adapter_config.json").read_text())
    assert saved["alpha"] == 8 and "lora_alpha" not in saved
    argv[argv.index("--max_steps") + 1] = "3"
    assert run_command("train", [*argv, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out and (out / "step-000003").is_dir()
    comfy = tmp_path / "lokr.safetensors"
    assert run_command("export", ["--input_name", str(step), "--format", "comfyui", "--output_name", str(comfy)]) == 0
    assert all(k.startswith("base_model.model.layers.") and ".lokr_w" in k for k in load_file(str(comfy)))
    _fails(capsys, "LoRA only", "export", ["--input_name", str(step), "--output_name", str(tmp_path / "d")])
    wav = tmp_path / "clip.wav"
    assert run_command("generate", ["--checkpoint_dir", str(checkpoint), "--prompt", "x", "--duration", "1",
                                    "--steps", "2", "--lora", str(comfy), "--output", str(wav), "--device", "cpu"]) == 0
    assert wav.is_file()


def _deltas(model, adapter_name: str = "lora_adapter") -> dict[str, torch.Tensor]:
    return {n: m.get_delta_weight(adapter_name) for n, m in model.named_modules() if hasattr(m, "get_delta_weight")
            and adapter_name in getattr(m, "active_adapters", [])}


def _build(argv):
    from acetune.stages import train
    from acetune.training.setup import build_run

    return build_run(parse_args(train.Args, argv, "acetune train"), echo=lambda _: None)[0]


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_init_lora_reproduces_the_delta(v15_prepared, tmp_path, kind):
    checkpoint, prep = v15_prepared
    trained = tmp_path / "trained"
    extra = ("--adapter", kind) if kind == "lokr" else ()
    assert run_command("train", _argv(checkpoint, prep, trained, "--max_steps", "2", *extra)) == 0
    step = trained / "step-000002"
    want = _deltas(_build(_argv(checkpoint, prep, tmp_path / "a", "--init_lora", str(step), *extra)).model)
    assert want and max(d.abs().max() for d in want.values()) > 0
    # another scale in the new run's config: the delta is the same
    sources = [str(step)]
    if kind == "lora":
        assert run_command("export", ["--input_name", str(step), "--output_name", str(tmp_path / "diff")]) == 0
        assert run_command("export", ["--input_name", str(step), "--format", "comfyui",
                                      "--output_name", str(tmp_path / "c.safetensors")]) == 0
        sources += [str(tmp_path / "diff" / "pytorch_lora_weights.safetensors"), str(tmp_path / "c.safetensors")]
        # the official trainer's folder: peft names around the decoder, adapter_model.safetensors + its config
        from safetensors.torch import save_file

        from acetune.lora.keys import v15_module

        official = tmp_path / "official"
        official.mkdir()
        trained_state = load_file(str(step / "pytorch_lora_weights.safetensors"))
        renamed = {}
        for key, value in trained_state.items():  # layers.0.self_attn.to_q.lora_A.weight -> ...q_proj.lora_A.weight
            module, factor, leaf = key.rsplit(".", 2)
            renamed[f"base_model.model.{v15_module(module)}.{factor}.{leaf}"] = value
        save_file(renamed, str(official / "adapter_model.safetensors"))
        (official / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": [
            "q_proj", "k_proj", "v_proj", "o_proj"]}))
        sources.append(str(official))
        config = {"r": 4, "lora_alpha": 2, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    else:
        config = {"r": 4, "alpha": 1, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    for i, source in enumerate(sources):
        got = _deltas(_build(_argv(checkpoint, prep, tmp_path / f"b{i}", "--init_lora", source, *extra,
                                   config=config)).model)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


def test_init_lora_refuses_another_rank(v15_prepared, tmp_path, capsys):
    checkpoint, prep = v15_prepared
    assert run_command("train", _argv(checkpoint, prep, tmp_path / "t", "--max_steps", "1")) == 0
    argv = _argv(checkpoint, prep, tmp_path / "u", "--init_lora", str(tmp_path / "t" / "step-000001"),
                 config={"r": 2, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]})
    _fails(capsys, "shape", "train", argv)


def test_export_write_alpha_and_merge(v15_prepared, tmp_path, capsys):
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.objective import context_latents

    checkpoint, prep = v15_prepared
    assert run_command("train", _argv(checkpoint, prep, tmp_path / "t", "--max_steps", "2")) == 0
    step = tmp_path / "t" / "step-000002"
    baked, alpha = tmp_path / "baked.safetensors", tmp_path / "alpha.safetensors"
    assert run_command("export", ["--input_name", str(step), "--format", "comfyui", "--output_name", str(baked)]) == 0
    assert run_command("export", ["--input_name", str(step), "--format", "comfyui", "--write_alpha",
                                  "--output_name", str(alpha)]) == 0
    with_alpha = load_file(str(alpha))
    assert sum(k.endswith(".alpha") for k in with_alpha) == 16
    assert all(v.item() == 8.0 for k, v in with_alpha.items() if k.endswith(".alpha"))  # scale 2 x r 4
    want = adapters.comfyui_deltas(load_file(str(baked)))
    got = adapters.comfyui_deltas(with_alpha)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    _fails(capsys, "--format comfyui", "export", ["--input_name", str(step), "--write_alpha", "--format", "peft",
                                                  "--output_name", str(tmp_path / "x")])

    merged = tmp_path / "merged"
    assert run_command("export", ["--input_name", str(step), "--merge", "--checkpoint_dir", str(checkpoint),
                                  "--strength", "0.5", "--output_name", str(merged)]) == 0
    model = AceStepTransformer1DModel.from_pretrained(str(merged)).eval()
    pipe = load_pipeline(checkpoint)
    assert run_command("export", ["--input_name", str(step), "--output_name", str(tmp_path / "diff")]) == 0
    load_lora_checked(pipe, tmp_path / "diff" / "pytorch_lora_weights.safetensors", scale=0.5)
    silence = pipe.condition_encoder.silence_latent
    args = dict(hidden_states=torch.randn(1, 20, 8), timestep=torch.tensor([0.5]), timestep_r=torch.tensor([0.5]),
                encoder_hidden_states=torch.randn(1, 5, 32), context_latents=context_latents(silence, 20)[None],
                return_dict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**args)[0], pipe.transformer(**args)[0], rtol=1e-4, atol=1e-5)


def test_dora_trains_and_exports_exactly(v15_prepared, tmp_path):
    """`--dora` on 1.5: the magnitude is trained and resumed; the ComfyUI export (dora_scale from the base
    weights) under ComfyUI's DoRA rule gives peft's merged DoRA weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from tests.lora.test_import_15 import comfyui_apply

    from acetune.lora.keys import v15_module

    checkpoint, prep = v15_prepared
    out = tmp_path / "out"
    argv = _argv(checkpoint, prep, out, "--max_steps", "1", "--dora")
    assert run_command("train", argv) == 0
    argv[argv.index("--max_steps") + 1] = "2"
    assert run_command("train", [*argv, "--resume"]) == 0
    state = load_file(str(out / "step-000002" / "pytorch_lora_weights.safetensors"))
    assert sum(k.endswith(".lora_magnitude_vector") for k in state) == 16
    comfy = tmp_path / "comfy.safetensors"
    assert run_command("export", ["--input_name", str(out / "step-000002"), "--format", "comfyui",
                                  "--checkpoint_dir", str(checkpoint), "--output_name", str(comfy)]) == 0
    lora = load_file(str(comfy))
    assert sum(k.endswith(".dora_scale") for k in lora) == 16

    run_ = _build(_argv(checkpoint, prep, tmp_path / "again", "--dora"))
    model = run_.model
    base = {f"diffusion_model.decoder.{v15_module(k[:-len('.base_layer.weight')])}.weight": v.detach().clone()
            for k, v in model.state_dict().items() if k.endswith(".base_layer.weight")}
    run_.setup.load_lora_state(model, state)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    want = {f"diffusion_model.decoder.{v15_module(k[:-len('.base_layer.weight')])}.weight": v
            for k, v in model.state_dict().items() if k.endswith(".base_layer.weight")}
    got = comfyui_apply(base, lora)
    worst = max(((got[k] - want[k].double()).norm() / want[k].double().norm()).item() for k in want)
    assert worst <= 1e-5, worst
    assert min((want[k].double() - base[k].double()).norm().item() for k in want) > 0
