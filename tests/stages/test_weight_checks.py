"""Weights are checked where they enter and leave: NaN/inf, widths that fit no layer, broken renders.

Each case asserts the exit code, the one error line (naming the module) and that nothing was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from acetune.cli import run_command
from acetune.lora import keys as lk
from acetune.lora.check import check_render
from acetune.models.v1.family import FAMILY

BAD_MODULE = "transformer_blocks.1.attn.to_v"


def make_lora(folder: Path, ckpt: Path, *, poison: str = "", in_width: int | None = None, seed: int = 0) -> Path:
    """A rank-4 LoRA on every attn.to_q/to_v of `ckpt`'s transformer, a training step folder's layout.

    poison "nan"/"inf" puts one bad value into BAD_MODULE's B; `in_width` gives every A that many inputs."""
    model = FAMILY.load_transformer(ckpt)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.endswith(("attn.to_q", "attn.to_v")):
            out_f, in_f = module.weight.shape
            tensors[lk.saved_key(name, lk.LORA_A)] = torch.randn(4, in_width or in_f, generator=g) * 0.3
            tensors[lk.saved_key(name, lk.LORA_B)] = torch.randn(out_f, 4, generator=g) * 0.3
    if poison:
        tensors[lk.saved_key(BAD_MODULE, lk.LORA_B)][3, 1] = float(poison)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / lk.LORA_WEIGHTS_FILE, metadata=lk.SAVED_METADATA)
    (folder / lk.ADAPTER_CONFIG_FILE).write_text(json.dumps({"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_v"]}))
    (folder / "train_config.json").write_text(json.dumps({"family": FAMILY.name, "checkpoint_dir": str(ckpt)}))
    return folder


def error_line(capsys) -> str:
    err = [s for s in capsys.readouterr().err.strip().splitlines() if s.startswith("Error:")]
    assert len(err) == 1, err
    return err[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_lora_is_refused_by_export_merge_and_generate(tiny_ckpt, tmp_path, capsys, poison):
    lora = make_lora(tmp_path / "step-000005", tiny_ckpt, poison=poison)
    before = listing(tmp_path)
    capsys.readouterr()
    runs = {
        "export": ["--input_name", str(lora), "--format", "comfyui", "--output_name", str(tmp_path / "out.safetensors")],
        "merge": ["--input_name", str(lora), "--merge", "--checkpoint_dir", str(tiny_ckpt),
                  "--output_name", str(tmp_path / "merged")],
        "generate": ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "pop", "--duration", "1", "--steps", "2",
                     "--seed", "0", "--lora", str(lora), "--output", str(tmp_path / "song.wav")],
    }
    for name, argv in runs.items():
        stage = "export" if name == "merge" else name
        assert run_command(stage, argv) == 1, name
        line = error_line(capsys)
        assert f"LoRA module '{BAD_MODULE}' holds 1 NaN/inf values" in line and "earlier step-*" in line, (name, line)
        assert listing(tmp_path) == before, name  # nothing written, no temp file left


def test_non_finite_init_lora_is_refused(train_tiny, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from train_fixtures import train_argv

    checkpoint, data = train_tiny
    lora = make_lora(tmp_path / "init", checkpoint, poison="nan")
    capsys.readouterr()
    assert run_command("train", train_argv(data, checkpoint, tmp_path / "out", "--max_steps", "1",
                                           "--init_lora", str(lora))) == 1
    assert f"--init_lora module '{BAD_MODULE}' holds 1 NaN/inf" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_lora_whose_widths_fit_no_layer_is_refused_before_writing(tiny_ckpt, tmp_path, capsys):
    lora = make_lora(tmp_path / "step-000005", tiny_ckpt, in_width=133)
    out = tmp_path / "out.safetensors"
    capsys.readouterr()
    # the model named in train_config.json beside the LoRA, or --checkpoint_dir
    for extra in ([], ["--checkpoint_dir", str(tiny_ckpt)]):
        assert run_command("export", ["--input_name", str(lora), "--output_name", str(out), *extra]) == 1
        line = error_line(capsys)
        assert "LoRA module 'transformer_blocks.0.attn.to_q' maps 133 ->" in line and "another size" in line
        assert not out.exists()
    assert run_command("generate", ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "pop", "--duration", "1",
                                    "--steps", "2", "--lora", str(lora), "--output", str(tmp_path / "s.wav")]) == 1
    assert "transformer_blocks.0.attn.to_q" in error_line(capsys) and not (tmp_path / "s.wav").exists()


def test_lora_with_no_model_known_is_checked_against_its_own_blocks_and_the_release(tiny_ckpt, tmp_path, capsys,
                                                                                     caplog):
    out = tmp_path / "out.safetensors"
    # one module made for another size: the other blocks' shapes give it away, no model needed
    lora = make_lora(tmp_path / "odd", tiny_ckpt)
    (lora / "train_config.json").unlink()
    tensors = load_file(lora / lk.LORA_WEIGHTS_FILE)
    rank = tensors[lk.saved_key(BAD_MODULE, lk.LORA_A)].shape[0]
    tensors[lk.saved_key(BAD_MODULE, lk.LORA_A)] = torch.ones(rank, 133)
    save_file(tensors, lora / lk.LORA_WEIGHTS_FILE, metadata=lk.SAVED_METADATA)
    capsys.readouterr()
    assert run_command("export", ["--input_name", str(lora), "--output_name", str(out)]) == 1
    line = error_line(capsys)
    assert f"LoRA module '{BAD_MODULE}' maps 133 ->" in line and "'transformer_blocks.*.attn.to_v' modules" in line
    assert not out.exists()
    # every block alike but of another size than the release: written, with a warning naming the mismatch
    lora = make_lora(tmp_path / "small", tiny_ckpt)
    (lora / "train_config.json").unlink()
    with caplog.at_level("WARNING"):
        assert run_command("export", ["--input_name", str(lora), "--output_name", str(out)]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "the released ACE-Step v1 3.5B" in warned and "--checkpoint_dir" in warned and out.exists()


@pytest.mark.parametrize("value", [float("nan"), 1.0, 0.0])
def test_generate_refuses_a_non_finite_or_constant_render(tiny_ckpt, tmp_path, capsys, monkeypatch, value):
    from acetune.models.v1.pipeline import V1Generator, output_samples

    monkeypatch.setattr(V1Generator, "render", lambda self, *a, **k: torch.full((2, output_samples(2.0)), value))
    out = tmp_path / "song.wav"
    assert run_command("generate", ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "pop", "--duration", "2",
                                    "--steps", "2", "--output", str(out)]) == 1
    line = error_line(capsys)
    assert ("NaN/inf samples" if value != value else f"constant (every sample {value:g})") in line
    assert "nothing was written" in line and not out.exists()


def test_check_render_accepts_music():
    check_render(torch.sin(torch.arange(4800) / 10.0).repeat(2, 1), "x.wav")


def test_export_does_not_replace_a_different_file(tiny_ckpt, tmp_path, capsys):
    first, second = (make_lora(tmp_path / f"step-00000{i}", tiny_ckpt, seed=i) for i in (1, 2))
    out = tmp_path / "style.safetensors"
    argv = ["--format", "comfyui", "--output_name", str(out)]
    assert run_command("export", ["--input_name", str(first), *argv]) == 0
    kept = out.read_bytes()
    assert run_command("export", ["--input_name", str(first), *argv]) == 0  # the same content: fine
    capsys.readouterr()
    assert run_command("export", ["--input_name", str(second), *argv]) == 1
    line = error_line(capsys)
    assert line == f"Error: {out}: exists and holds something else — pass --overwrite to replace it, or choose another --output_name"
    assert out.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))  == []
    assert run_command("export", ["--input_name", str(second), *argv, "--overwrite"]) == 0
    assert out.read_bytes() != kept
