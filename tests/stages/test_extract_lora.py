"""`acetune export --extract_lora`: the written LoRA's delta (B @ A, strength 1.0, ComfyUI keys) equals the
rank-k SVD truncation of the fine-tune's weight delta, and the printed kept energy is sum(s_k^2)/sum(s^2)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from acetune.cli import run_command
from acetune.layout import V1_TRANSFORMER_DIR


def _tuned_copy(base_dir: Path, out: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 'fine-tuned' transformer folder: every 2-D weight moved by a full-rank random delta. Returns the deltas."""
    shutil.copytree(base_dir, out)
    files = sorted(out.glob("*.safetensors"))
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for f in files:
        state = load_file(str(f))
        for key, value in state.items():
            if value.ndim == 2 and key.endswith(".weight") and value.is_floating_point():
                d = torch.randn(value.shape, generator=g, dtype=torch.float64) * 1e-2
                # a heavy head of singular values (like a real fine-tune) plus a tail
                d[:, : min(value.shape) // 2] *= 5
                state[key] = (value.double() + d).to(value.dtype)
                deltas[key[: -len(".weight")]] = state[key].double() - value.double()
        save_file(state, str(f), metadata={"format": "pt"})
    return deltas


def _truncated(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k], float((s[:k] ** 2).sum() / (s ** 2).sum())


def test_extracted_delta_is_the_rank_k_truncation_with_its_energy(tiny_ckpt, tmp_path, capsys):
    base = tiny_ckpt / V1_TRANSFORMER_DIR
    deltas = _tuned_copy(base, tmp_path / "tuned")
    out = tmp_path / "lora.safetensors"
    code = run_command("export", ["--extract_lora", "--base", str(tiny_ckpt), "--tuned", str(tmp_path / "tuned"),
                                  "--rank", "3", "--output_name", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lora = load_file(str(out))
    assert all(k.startswith("diffusion_model.") for k in lora)  # the v1 ComfyUI layout (facts/comfyui-lora.md)
    assert not any(k.endswith(".alpha") for k in lora)  # scale 1: strength 1.0 applies B @ A
    reported = {m: float(e) for m, e in re.findall(r"^(\S+)\s+\d+\s+([0-9.]+)$", printed, re.M)}
    kept_total = removed_total = 0.0
    for module, delta in deltas.items():
        a = lora[f"diffusion_model.{module}.lora_A.weight"].double()
        b = lora[f"diffusion_model.{module}.lora_B.weight"].double()
        expected, kept = _truncated(delta, 3)
        assert a.shape[0] == 3
        torch.testing.assert_close(b @ a, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
        assert reported[module] == pytest.approx(kept, abs=1e-6)
        energy = float((delta ** 2).sum())
        kept_total += kept * energy
        removed_total += energy
    overall = float(re.search(r"kept energy: ([0-9.]+) overall", printed).group(1))
    assert overall == pytest.approx(kept_total / removed_total, abs=1e-4)


def test_energy_target_picks_the_smallest_rank(tiny_ckpt, tmp_path, capsys):
    deltas = _tuned_copy(tiny_ckpt / V1_TRANSFORMER_DIR, tmp_path / "tuned", seed=1)
    out = tmp_path / "lora.safetensors"
    assert run_command("export", ["--extract_lora", "--base", str(tiny_ckpt), "--tuned", str(tmp_path / "tuned"),
                                  "--energy", "0.5", "--output_name", str(out)]) == 0
    lora = load_file(str(out))
    for module, delta in list(deltas.items())[:8]:
        s = torch.linalg.svd(delta, full_matrices=False).S
        cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        k = int((cum < 0.5 - 1e-12).sum()) + 1
        assert lora[f"diffusion_model.{module}.lora_A.weight"].shape[0] == k


def test_mismatched_models_are_one_line_errors(tiny_ckpt, tmp_path, capsys):
    from acetune.models.v1.tiny import save_tiny_checkpoint

    other = save_tiny_checkpoint(tmp_path / "other", transformer_overrides={"num_layers": 2, "attention_head_dim": 64})
    code = run_command("export", ["--extract_lora", "--base", str(tiny_ckpt), "--tuned", str(other), "--rank", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and ("shape" in err or "only one of" in err)

    code = run_command("export", ["--extract_lora", "--base", str(tiny_ckpt), "--tuned", str(tmp_path / "nope"),
                                  "--rank", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "--tuned" in err and len(err.strip().splitlines()) == 1
    code = run_command("export", ["--extract_lora", "--base", str(tiny_ckpt), "--tuned", str(other)])
    assert code != 0 and "exactly one of --rank R or --energy E" in capsys.readouterr().err


def test_acestep15_extraction_uses_the_comfyui_15_names(tmp_path, capsys):
    """1.5: keys `base_model.model.<original 1.5 module>` (q_proj ... o_proj), which ComfyUI maps (facts)."""
    from acetune.models.v15.tiny import save_tiny_checkpoint_v15

    base = save_tiny_checkpoint_v15(tmp_path / "v15")
    deltas = _tuned_copy(base / "transformer", tmp_path / "tuned", seed=2)
    out = tmp_path / "lora.safetensors"
    assert run_command("export", ["--extract_lora", "--base", str(base), "--tuned", str(tmp_path / "tuned"),
                                  "--rank", "2", "--output_name", str(out)]) == 0, capsys.readouterr()
    lora = load_file(str(out))
    assert all(k.startswith("base_model.model.") for k in lora)
    assert not any(".to_q." in k or ".to_out." in k for k in lora) and any(".o_proj." in k for k in lora)
    module = "layers.0.self_attn.to_out.0"
    a = lora["base_model.model.layers.0.self_attn.o_proj.lora_A.weight"].double()
    b = lora["base_model.model.layers.0.self_attn.o_proj.lora_B.weight"].double()
    expected, _ = _truncated(deltas[module], 2)
    torch.testing.assert_close(b @ a, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
