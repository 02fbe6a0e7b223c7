"""SVD-resize a LoRA module, and the peft config that describes modules whose ranks/scales changed.

Used by `acetune export --resize/--resize_energy` for both families (`stages/export.py`,
`models/v15/export.py`); lives under `lora/` so model code never imports a stage.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from acetune.lora.file import LoraModule, pattern_value, peft_scale


def svd_resize(mod: LoraModule, rank: int | None = None, energy: float | None = None,
               use_rslora: bool = False) -> tuple[LoraModule, float]:
    """Truncated SVD of the delta `scale * B @ A`; returns (new module, kept energy fraction).

    Kept energy = sum of the kept squared singular values / all of them, so the relative Frobenius
    error of the new delta is sqrt(1 - kept). The new module keeps the same lora_alpha (scale
    re-derived for the new rank, rsLoRA or not), so a peft config only needs a new rank.
    """
    a, b = mod.a.double(), mod.b.double()
    qb, rb = torch.linalg.qr(b)  # (out, k1), (k1, r)
    qa, ra = torch.linalg.qr(a.T)  # (in, k2), (k2, r)
    u, s, vh = torch.linalg.svd(mod.scale * rb @ ra.T)  # delta = qb u diag(s) vh qa^T
    total = float((s ** 2).sum())
    cum = (torch.cumsum(s ** 2, 0) / total).tolist() if total > 0 else [1.0] * len(s)
    if rank is not None:
        k = min(rank, len(s))
    else:
        k = next(i + 1 for i, e in enumerate(cum) if e >= energy - 1e-12)
    old_alpha = mod.scale * (math.sqrt(mod.rank) if use_rslora else mod.rank)
    new_scale = peft_scale(old_alpha, k, use_rslora)
    root = torch.sqrt(s[:k] / new_scale)
    new_b = (qb @ u[:, :k]) * root  # (out, k)
    new_a = root[:, None] * (vh[:k] @ qa.T)  # (k, in)
    return LoraModule(new_a.to(mod.a.dtype), new_b.to(mod.b.dtype), new_scale), cum[k - 1]


def describe_config(modules: dict[str, LoraModule], base: dict | None) -> dict:
    """A peft config whose per-module scale equals each module's `scale` (rank/alpha patterns as needed)."""
    ranks = {m: mod.rank for m, mod in modules.items()}
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    cfg = {k: v for k, v in (base or {}).items() if k not in ("rank_pattern", "alpha_pattern")}
    cfg.setdefault("target_modules", sorted(modules))
    cfg["r"] = r0
    cfg["rank_pattern"] = {m: r for m, r in sorted(ranks.items()) if r != r0}
    cfg["use_dora"] = any(mod.magnitude is not None for mod in modules.values())
    if base is not None and all(math.isclose(
            peft_scale(pattern_value(base.get("alpha_pattern"), m, base["lora_alpha"]), mod.rank,
                       bool(base.get("use_rslora", False))), mod.scale, rel_tol=1e-6) for m, mod in modules.items()):
        cfg["alpha_pattern"] = dict(base.get("alpha_pattern") or {})
        return cfg
    # Otherwise plain LoRA scaling: lora_alpha = scale * r, exceptions in alpha_pattern.
    alphas = {m: mod.scale * mod.rank for m, mod in modules.items()}
    a0 = Counter(alphas.values()).most_common(1)[0][0]
    cfg.update(use_rslora=False, lora_alpha=a0,
               alpha_pattern={m: a for m, a in sorted(alphas.items()) if not math.isclose(a, a0, rel_tol=1e-9)})
    return cfg
