"""`acetune train --dora` on ACE-Step v1: the magnitude is trained, checkpointed, resumed, and exported so
ComfyUI's DoRA rule (tests.stages.test_export.comfyui_apply) gives peft's merged DoRA weights."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from tests.stages.test_export import comfyui_apply
from tests.training.train_fixtures import make_checkpoint, make_dataset, train_argv

from acetune.cli import run_command
from acetune.lora.keys import LORA_WEIGHTS_FILE


def test_v1_dora_trains_resumes_and_exports_exactly(tmp_path, capsys):
    from acetune.models.family import get_family
    from acetune.training.lora import add_lora

    ckpt = make_checkpoint(tmp_path / "ckpt")
    data = make_dataset(tmp_path / "data", ckpt, songs=1)
    out = tmp_path / "out"
    assert run_command("train", train_argv(data, ckpt, out, "--max_steps", "1", "--dora")) == 0
    first = load_file(str(out / "step-000001" / LORA_WEIGHTS_FILE))
    assert run_command("train", train_argv(data, ckpt, out, "--max_steps", "2", "--dora", "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out
    state = load_file(str(out / "step-000002" / LORA_WEIGHTS_FILE))
    magnitudes = [k for k in state if k.endswith(".lora_magnitude_vector")]
    assert len(magnitudes) == 16 and any(not torch.equal(state[k], first[k]) for k in magnitudes)  # trained

    comfy = tmp_path / "comfy.safetensors"
    assert run_command("export", ["--input_name", str(out / "step-000002"), "--format", "comfyui",
                                  "--checkpoint_dir", str(ckpt), "--output_name", str(comfy)]) == 0
    family = get_family("ace-step-v1")
    base = family.load_transformer(ckpt).state_dict()
    model = family.load_transformer(ckpt)
    setup = add_lora(model, {"r": 4, "lora_alpha": 4, "use_dora": True,
                             "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]})
    setup.load_lora_state(model, state)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    want = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    got = comfyui_apply(base, load_file(str(comfy)))
    changed = [k for k in want if not torch.equal(want[k], base[k])]
    assert len(changed) == 16
    worst = max(((got[k].double() - want[k].double()).norm() / want[k].double().norm()).item() for k in changed)
    assert worst <= 1e-5, worst

    capsys.readouterr()
    assert run_command("train", train_argv(data, ckpt, tmp_path / "x", "--dora", "--adapter", "lokr")) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--dora works with --adapter lora only" in err
