"""Extract a LoRA from a full fine-tune: a truncated SVD of each linear layer's weight delta.

For every 2-D weight present in both the base and the tuned model, delta = W_tuned - W_base is
factored as U diag(s) V^T. Keeping the k largest singular values gives the best rank-k
approximation in the Frobenius norm (Eckart–Young), stored as B = U_k diag(sqrt(s_k)) and
A = diag(sqrt(s_k)) V_k^T with scale 1, so a loader applying `W + strength · B @ A` reproduces the
truncated delta at strength 1.0. The kept energy of a module is sum(s_k^2) / sum(s^2); the relative
Frobenius error of its delta is sqrt(1 - kept).

Tensors are read one at a time through `safe_open`, so peak memory is two copies of the largest
layer, not two models. Changes a LoRA cannot carry (biases, norms, convolutions, embeddings) are
listed in the report, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from acetune.errors import InputError, UsageError
from acetune.lora.file import LoraModule


@dataclass
class ExtractReport:
    """What an extraction kept, skipped and could not represent."""

    kept_energy: dict[str, float] = field(default_factory=dict)  # module -> kept fraction of sum(s^2)
    delta_energy: dict[str, float] = field(default_factory=dict)  # module -> sum(s^2) = ||delta||_F^2
    ranks: dict[str, int] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)  # 2-D weights with a zero delta
    not_representable: dict[str, float] = field(default_factory=dict)  # key -> relative change

    @property
    def total_energy(self) -> float:
        """Kept energy over all modules: sum of kept sum(s_k^2) / sum of sum(s^2)."""
        total = sum(self.delta_energy.values())
        kept = sum(self.kept_energy[m] * e for m, e in self.delta_energy.items())
        return kept / total if total > 0 else 1.0


def truncate_delta(delta: torch.Tensor, rank: int | None = None, energy: float | None = None
                   ) -> tuple[LoraModule, float, float]:
    """Best rank-k factors of `delta` (out, in): (LoraModule with scale 1, kept fraction, delta energy).

    Exactly one of `rank` (k = min(rank, min(out, in))) or `energy` (smallest k whose kept fraction
    reaches it) must be given. Computed in float64; the factors come back in `delta`'s dtype.
    """
    if (rank is None) == (energy is None):
        raise UsageError("give exactly one of --rank or --energy")
    d = delta.double()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    power = s ** 2
    total = float(power.sum())
    if total == 0.0:
        k = 1
        cum = [1.0]
    else:
        cum = (torch.cumsum(power, 0) / total).tolist()
        if rank is not None:
            k = max(1, min(rank, len(s)))
        else:
            k = next((i + 1 for i, e in enumerate(cum) if e >= energy - 1e-12), len(s))
    root = s[:k].sqrt()
    b = u[:, :k] * root  # (out, k)
    a = root[:, None] * vh[:k]  # (k, in)
    return LoraModule(a.to(delta.dtype), b.to(delta.dtype), 1.0), cum[k - 1], total


def _open(path: Path) -> tuple[dict[str, Path], Callable[[str], torch.Tensor]]:
    """Key -> file for a .safetensors file or a folder of them (sharded diffusers layout)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
    elif path.suffix == ".safetensors" and path.is_file():
        files = [path]
    else:
        files = []
    if not files:
        raise InputError(f"{path}: no .safetensors weights here; give a model folder (diffusers layout) "
                         "or a .safetensors file")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                where[key] = f

    def get(key: str) -> torch.Tensor:
        with safe_open(str(where[key]), framework="pt") as sf:
            return sf.get_tensor(key)

    return where, get


def iter_deltas(base: Path, tuned: Path) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(key, base tensor, tuned tensor) for every key both hold; a key only one side has is an error."""
    base_keys, get_base = _open(base)
    tuned_keys, get_tuned = _open(tuned)
    only = sorted(set(base_keys) ^ set(tuned_keys))
    if only:
        raise InputError(f"{tuned}: {len(only)} weight(s) are in only one of base and tuned (first: {only[0]}); "
                         "give the same model's base and fine-tuned weights")
    for key in sorted(base_keys):
        yield key, get_base(key), get_tuned(key)


def extract_lora(base: Path | str, tuned: Path | str, rank: int | None = None, energy: float | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[dict[str, LoraModule], ExtractReport]:
    """LoRA modules `{module path: LoraModule}` for every changed 2-D `*.weight`, plus the report."""
    modules: dict[str, LoraModule] = {}
    report = ExtractReport()
    for key, w0, w1 in iter_deltas(Path(base), Path(tuned)):
        if w0.shape != w1.shape:
            raise InputError(f"{tuned}: {key} has shape {tuple(w1.shape)} but the base has {tuple(w0.shape)}; "
                             "the two files are not the same architecture")
        delta = w1.double() - w0.double()
        if not torch.isfinite(delta).all():
            raise InputError(f"{tuned}: {key} holds NaN or inf; the fine-tune is broken, pick an earlier checkpoint")
        changed = bool(delta.abs().max() > 0)
        if w0.ndim == 2 and key.endswith(".weight"):
            if not changed:
                report.unchanged.append(key)
                continue
            module = key[: -len(".weight")]
            mod, kept, total = truncate_delta(delta, rank=rank, energy=energy)
            modules[module] = LoraModule(mod.a.to(dtype), mod.b.to(dtype), 1.0)
            report.kept_energy[module] = kept
            report.ranks[module] = mod.rank
            report.delta_energy[module] = total
        elif changed:
            report.not_representable[key] = float(delta.norm() / w0.double().norm().clamp_min(1e-30))
    if not modules:
        raise InputError(f"{tuned}: no linear weight differs from the base; is this really the fine-tuned model?")
    return modules, report


def summary_lines(report: ExtractReport) -> list[str]:
    """Human lines for the end-of-run summary."""
    ranks = sorted(report.ranks.values())
    lines = [f"modules extracted: {len(report.ranks)} (rank {ranks[0]}–{ranks[-1]})",
             f"kept energy: {report.total_energy:.4f} overall, "
             f"{min(report.kept_energy.values()):.4f} in the worst module"]
    if report.unchanged:
        lines.append(f"unchanged linear weights: {len(report.unchanged)}")
    if report.not_representable:
        worst = max(report.not_representable, key=report.not_representable.get)
        lines.append(f"changed but not representable as LoRA (biases, norms, convs): "
                     f"{len(report.not_representable)}, largest relative change "
                     f"{report.not_representable[worst]:.2e} in {worst}")
    return lines


def delta_of(modules: Mapping[str, LoraModule]) -> dict[str, torch.Tensor]:
    """`scale · B @ A` per module (float64), the delta a loader applies at strength 1.0."""
    return {name: m.scale * m.b.double() @ m.a.double() for name, m in modules.items()}
