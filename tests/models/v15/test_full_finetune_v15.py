"""`acetune train --full` on ACE-Step 1.5: every DiT weight trains and the run ends with a diffusers
`AceStepTransformer1DModel` folder holding them."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.training import checkpoint as ckpt


def test_acestep15_full_finetune_writes_a_diffusers_transformer(v15_prepared, tmp_path):
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
