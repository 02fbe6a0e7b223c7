"""acetune.lora.extract: the extracted LoRA's delta is the rank-k SVD truncation of the fine-tune's delta,
and the reported energy is the kept share of the squared singular values."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from acetune.errors import InputError, UsageError
from acetune.lora.extract import delta_of, extract_lora, summary_lines, truncate_delta


def _heavy_tailed_delta(out: int, inp: int, seed: int) -> torch.Tensor:
    """A delta with a decaying spectrum plus a few large outlier entries (not friendly Gaussian noise)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g, dtype=torch.float64))
    k = min(out, inp)
    s = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** 1.5
    d = (u[:, :k] * s) @ v[:, :k].T
    idx = torch.randint(0, out * inp, (3,), generator=g)
    d.view(-1)[idx] += 0.5  # outliers
    return d


def _independent_truncation(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k], float((s[:k] ** 2).sum() / (s ** 2).sum())


@pytest.fixture
def model_pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {
        "blocks.0.attn.to_q.weight": torch.randn(24, 16, generator=g),
        "blocks.0.attn.to_out.0.weight": torch.randn(16, 24, generator=g),
        "blocks.0.attn.to_out.0.bias": torch.randn(16, generator=g),
        "blocks.0.norm.weight": torch.ones(16),
        "blocks.1.ff.weight": torch.randn(32, 16, generator=g),  # left unchanged
        "proj_in.weight": torch.randn(8, 4, 3, generator=g),  # a conv: not representable
    }
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["blocks.0.attn.to_q.weight"] += _heavy_tailed_delta(24, 16, 1).float()
    tuned["blocks.0.attn.to_out.0.weight"] += _heavy_tailed_delta(16, 24, 2).float()
    tuned["blocks.0.attn.to_out.0.bias"] += 0.01
    tuned["proj_in.weight"] += 0.02
    (tmp_path / "base").mkdir()
    (tmp_path / "tuned").mkdir()
    # the base sharded over two files, the tuned model in one: both layouts are read
    keys = sorted(base)
    save_file({k: base[k] for k in keys[:3]}, str(tmp_path / "base" / "a.safetensors"))
    save_file({k: base[k] for k in keys[3:]}, str(tmp_path / "base" / "b.safetensors"))
    save_file(tuned, str(tmp_path / "tuned" / "diffusion_pytorch_model.safetensors"))
    return tmp_path / "base", tmp_path / "tuned", base, tuned


def test_fixed_rank_delta_is_the_svd_truncation(model_pair):
    base_dir, tuned_dir, base, tuned = model_pair
    modules, report = extract_lora(base_dir, tuned_dir, rank=4, dtype=torch.float64)
    assert set(modules) == {"blocks.0.attn.to_q", "blocks.0.attn.to_out.0"}
    deltas = delta_of(modules)
    for name in modules:
        full = tuned[name + ".weight"].double() - base[name + ".weight"].double()
        want, kept = _independent_truncation(full, 4)
        assert modules[name].rank == 4
        torch.testing.assert_close(deltas[name], want, rtol=0, atol=1e-10)
        assert report.kept_energy[name] == pytest.approx(kept, abs=1e-12)
        # the relative Frobenius error is sqrt(1 - kept), as the docs say
        err = float((deltas[name] - full).norm() / full.norm())
        assert err == pytest.approx((1 - kept) ** 0.5, rel=1e-9)
    assert report.unchanged == ["blocks.1.ff.weight"]
    assert set(report.not_representable) == {"blocks.0.attn.to_out.0.bias", "proj_in.weight"}
    assert "blocks.0.norm.weight" not in report.not_representable  # unchanged, so not listed
    lines = summary_lines(report)
    assert any("not representable" in line and "2" in line for line in lines)


def test_energy_target_picks_the_smallest_rank_reaching_it():
    delta = _heavy_tailed_delta(40, 30, 3)
    s = torch.linalg.svdvals(delta)
    cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    for target in (0.5, 0.9, 0.99):
        mod, kept, _ = truncate_delta(delta, energy=target)
        want_k = int((cum < target).sum()) + 1
        assert mod.rank == want_k and kept >= target
        assert float(cum[want_k - 2]) < target if want_k > 1 else True


def test_overall_energy_weights_modules_by_their_delta(model_pair):
    base_dir, tuned_dir, base, tuned = model_pair
    _, report = extract_lora(base_dir, tuned_dir, rank=2)
    kept_sq = total_sq = 0.0
    for name in report.kept_energy:
        full = tuned[name + ".weight"].double() - base[name + ".weight"].double()
        _, kept = _independent_truncation(full, 2)
        kept_sq += kept * float(full.norm() ** 2)
        total_sq += float(full.norm() ** 2)
    assert report.total_energy == pytest.approx(kept_sq / total_sq, rel=1e-9)


def test_rank_larger_than_the_layer_keeps_everything(model_pair):
    base_dir, tuned_dir, base, tuned = model_pair
    modules, report = extract_lora(base_dir, tuned_dir, rank=1000, dtype=torch.float64)
    for name, d in delta_of(modules).items():
        full = tuned[name + ".weight"].double() - base[name + ".weight"].double()
        torch.testing.assert_close(d, full, rtol=0, atol=1e-10)
        assert report.kept_energy[name] == pytest.approx(1.0)


def test_bad_inputs_are_one_line_errors(model_pair, tmp_path):
    base_dir, tuned_dir, base, _ = model_pair
    with pytest.raises(UsageError, match="exactly one"):
        extract_lora(base_dir, tuned_dir)
    with pytest.raises(InputError, match="no linear weight differs"):
        extract_lora(base_dir, base_dir, rank=4)
    other = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(InputError, match="only one of base and tuned"):
        extract_lora(base_dir, other, rank=4)
    broken = {k: v.clone() for k, v in base.items()}
    broken["blocks.0.attn.to_q.weight"][0, 0] = float("nan")
    save_file(broken, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InputError, match="NaN or inf"):
        extract_lora(base_dir, tmp_path / "nan.safetensors", rank=4)
    with pytest.raises(InputError, match="no .safetensors"):
        extract_lora(tmp_path / "missing", tuned_dir, rank=4)
