"""`acetune train --full` on ACE-Step 1.5: every DiT weight trains and the run ends with a diffusers
`AceStepTransformer1DModel` folder holding them, and prints the export command that writes it into the
user's ComfyUI 1.5 file (run here on a generated one)."""

from __future__ import annotations

import logging
import shlex

import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.training import checkpoint as ckpt


def test_acestep15_full_finetune_writes_a_diffusers_transformer(v15_prepared, tmp_path, capsys, caplog):
    from diffusers import AceStepTransformer1DModel

    checkpoint, prep = v15_prepared
    out = tmp_path / "out"
    argv = ["--dataset_path", str(prep), "--checkpoint_dir", str(checkpoint), "--output_dir", str(out), "--full",
            "--precision", "32", "--device", "cpu", "--logger", "none", "--max_steps", "2",
            "--every_n_train_steps", "2", "--learning_rate", "1e-3", "--warmup_steps", "0"]
    assert run_command("train", argv) == 0
    trained = load_file(str(out / "step-000002" / ckpt.FULL_WEIGHTS_FILE))
    model = AceStepTransformer1DModel.from_pretrained(str(out / "transformer"))
    params = dict(model.named_parameters())
    assert set(trained) == set(params)  # every DiT weight was trained
    assert all(torch.equal(params[k], trained[k].to(params[k].dtype)) for k in trained)
    base = dict(AceStepTransformer1DModel.from_pretrained(str(checkpoint / "transformer")).named_parameters())
    assert sum(not torch.equal(base[k], params[k]) for k in params) > len(params) // 2

    # the printed command, run with a ComfyUI file whose condition encoder is the checkpoint's: no warning
    from tests.models.v15.comfyui_tree import save_comfyui_base, tiny_comfyui_config

    from acetune.models.v15.export_comfyui import comfyui_name

    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ComfyUI single file: "))
    argv = shlex.split(line.split(": ", 1)[1].split(" --comfyui_base ")[0])[2:]
    assert argv == ["--comfyui_checkpoint", "--input_name", str(out / "transformer")]
    encoder = load_file(str(checkpoint / "condition_encoder" / "diffusion_pytorch_model.safetensors"))
    same = {"null_condition_emb": encoder["null_condition_emb"].to(torch.bfloat16),
            "encoder.text_projector.weight": encoder["text_projector.weight"].to(torch.bfloat16)}
    for name, extra, warns in (("same", same, False), ("other", {}, True)):
        base = save_comfyui_base(tmp_path / f"{name}.safetensors", tiny_comfyui_config(), extra=extra)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert run_command("export", [*argv, "--comfyui_base", str(base), "--overwrite"]) == 0
        assert ("is not the one of" in caplog.text) == warns
    single = load_file(str(out / "transformer_comfyui.safetensors"))
    assert all(torch.equal(single[comfyui_name(k)], v) for k, v in params.items())
