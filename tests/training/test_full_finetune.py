"""`acetune train --full`: the tiny model learns one song, a stopped run resumes bitwise, `--trainable`
selects weights, and the run ends with a transformer folder that `from_pretrained` loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.errors import UsageError
from acetune.training import checkpoint as ckpt
from acetune.training import loop
from acetune.training.full import matches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fixtures import TINY_OVERRIDES, make_checkpoint, make_dataset, train_argv  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint, ssl=True)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ckpt.FULL_WEIGHTS_FILE))


def test_overfits_one_song(tmp_path, capsys):
    from acetune.models.v1.tiny import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", seed=3,
                                      transformer_overrides={**TINY_OVERRIDES, "attention_head_dim": 64})
    data = make_dataset(tmp_path / "data", checkpoint, songs=1, frames=(16,))
    code = run_command("train", train_argv(data, checkpoint, tmp_path / "out", "--full", "--overfit_check"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    line = next(s for s in printed.splitlines() if s.startswith("overfit check"))
    assert "PASSED" in line
    first, last = (float(x) for x in line.split("loss ")[1].split(" (")[0].split(" -> "))
    assert first / last >= 10.0


def test_stop_then_resume_is_bitwise_and_ends_with_a_model_folder(tiny, tmp_path, monkeypatch, capsys):
    checkpoint, data = tiny
    flags = ["--full", "--max_steps", "4", "--every_n_train_steps", "2", "--optimizer", "adafactor",
             "--learning_rate", "1e-3"]
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "ref", *flags)) == 0
    ref = _weights(tmp_path / "ref" / "step-000004")

    # stop after step 2 exactly as Ctrl-C does (the loop polls `stop_requested` after each step)
    real_step_count = {"n": 0}

    def stop_after_two() -> bool:
        real_step_count["n"] += 1
        return real_step_count["n"] >= 2

    monkeypatch.setattr(loop, "stop_requested", stop_after_two)
    run_command("train", train_argv(data, checkpoint, tmp_path / "run", *flags))
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")][-1] == 2
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "run", *flags, "--resume")) == 0
    got = _weights(tmp_path / "run" / "step-000004")
    assert got.keys() == ref.keys() and len(ref) > 20
    assert all(torch.equal(got[k], ref[k]) for k in ref), "resumed full fine-tune differs from the uninterrupted run"

    # the weights moved, and the final folder is a loadable transformer holding them
    from acetune.models.v1.transformer import ACEStepTransformer2DModel

    folder = tmp_path / "ref" / "transformer"
    model = ACEStepTransformer2DModel.from_pretrained(folder)
    params = dict(model.named_parameters())
    base = ACEStepTransformer2DModel.from_pretrained(checkpoint / "ace_step_transformer")
    base_params = dict(base.named_parameters())
    moved = [k for k in ref if not torch.equal(base_params[k].float(), ref[k].float())]
    assert len(moved) > len(ref) // 2
    for k in moved[:10]:
        torch.testing.assert_close(params[k], ref[k].to(params[k].dtype), rtol=0, atol=0)


def test_trainable_patterns_select_modules(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    flags = ["--full", "--trainable", "transformer_blocks.*.attn", "--max_steps", "1", "--every_n_train_steps", "1"]
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "out", *flags)) == 0
    names = set(_weights(tmp_path / "out" / "step-000001"))
    assert names and all(n.startswith("transformer_blocks.") and ".attn." in n for n in names)
    assert "full fine-tune of transformer_blocks.*.attn" in capsys.readouterr().out


def test_pattern_matching_rules():
    assert matches("transformer_blocks.0.attn.to_q.weight", ["transformer_blocks.*.attn"])
    assert matches("transformer_blocks.0.attn.to_q.weight", ["*.to_q"])
    assert not matches("transformer_blocks.0.cross_attn.to_q.weight", ["transformer_blocks.*.attn"])
    assert matches("final_layer.linear.bias", ["final_layer"])


@pytest.mark.parametrize("flags, message", [
    ({"trainable": ["x"]}, "--trainable selects weights for --full"),
    ({"full": True, "int8": True}, "drop --int8"),
    ({"full": True, "init_lora": "a.safetensors"}, "drop --init_lora"),
])
def test_bad_flag_combinations_are_one_line(tiny, flags, message):
    from acetune.stages.train import Args

    checkpoint, data = tiny
    with pytest.raises(UsageError, match=message):
        Args(dataset_path=str(data), checkpoint_dir=str(checkpoint), **flags)


def test_no_matching_parameter_is_refused(tiny, tmp_path):
    checkpoint, data = tiny
    code = run_command("train", train_argv(data, checkpoint, tmp_path / "out", "--full", "--trainable", "nothing.*",
                                           "--max_steps", "1"))
    assert code != 0



def test_comfyui_single_file_has_the_loader_keys(tiny, tmp_path, capsys):
    """The end of a --full run writes `transformer_comfyui.safetensors`: ComfyUI strips `model.diffusion_model.`
    (its checkpoint prefix, > 5 keys carry it), detects ACE-Step v1 by `genre_embedder.weight` and loads exactly
    the official transformer keys (facts/comfyui-lora.md); the tensors are the fine-tuned ones."""
    from acetune.training.full import COMFYUI_CHECKPOINT_FILE, COMFYUI_MODEL_PREFIX

    checkpoint, data = tiny
    flags = ["--full", "--max_steps", "2", "--every_n_train_steps", "2"]  # step 1 runs at LR 0 (warmup)
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "out", *flags)) == 0
    assert "ComfyUI:" in capsys.readouterr().out
    single = load_file(str(tmp_path / "out" / COMFYUI_CHECKPOINT_FILE))
    official = load_file(str(next((checkpoint / "ace_step_transformer").glob("*.safetensors"))))
    assert all(k.startswith(COMFYUI_MODEL_PREFIX) for k in single)
    stripped = {k[len(COMFYUI_MODEL_PREFIX):]: v for k, v in single.items()}
    assert stripped.keys() == official.keys() and "genre_embedder.weight" in stripped
    assert all(stripped[k].shape == official[k].shape for k in official)
    trained = _weights(tmp_path / "out" / "step-000002")
    moved = [k for k in trained if not torch.equal(trained[k].float(), official[k].float())]
    assert moved and all(torch.equal(stripped[k], trained[k].to(stripped[k].dtype)) for k in moved)
    # and through export, from the transformer folder
    out = tmp_path / "again.safetensors"
    assert run_command("export", ["--comfyui_checkpoint", "--input_name", str(tmp_path / "out" / "transformer"),
                                  "--output_name", str(out)]) == 0
    again = load_file(str(out))
    assert again.keys() == single.keys() and all(torch.equal(again[k], single[k]) for k in single)
