"""Guidance rules of the ACE-Step v1 sampler: adaptive projected guidance (default) and plain CFG.

APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales in
Diffusion Models") changes how the guidance direction Δ = D(cond) − D(uncond) is added to the
conditional prediction D(cond), in three steps per guided sampling step t:

1. momentum: Δ̄_t = Δ_t + β·Δ̄_{t−1} (Δ̄ starts at 0). With β < 0 ("reverse momentum") each step
   subtracts part of the previous steps' direction, which counters the build-up of saturation;
2. norm threshold: Δ̄ ← Δ̄ · min(1, r / ‖Δ̄‖), so one step never moves further than r;
3. projection: split Δ̄ against D(cond) into Δ∥ = (⟨Δ̄, D⟩ / ⟨D, D⟩)·D and Δ⊥ = Δ̄ − Δ∥. The
   parallel part mostly raises saturation, so it is scaled down by η:

       guided = D(cond) + (w − 1)·(Δ⊥ + η·Δ∥).

The constants are the ones ACE-Step v1 samples with (facts, kept for parity): β = −0.75,
r = 2.5, η = 0; norms and inner products are taken over the last two axes (16 × frames) separately
for every (item, channel); the projection runs in float64 and returns to the input dtype.
"""

from __future__ import annotations

import torch

MOMENTUM = -0.75  # β
NORM_THRESHOLD = 2.5  # r
PARALLEL_WEIGHT = 0.0  # η
REDUCE_DIMS = (-1, -2)  # (16, frames): one norm / inner product per (item, channel)


def split_along(delta: torch.Tensor, direction: torch.Tensor,
                dims: tuple[int, ...] = REDUCE_DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ∥, Δ⊥): the parts of `delta` parallel and orthogonal to `direction` over `dims`.

    Computed in float64 and returned in `delta`'s dtype; Δ∥ + Δ⊥ = Δ up to that rounding. A zero
    `direction` has no parallel part (Δ∥ = 0). Shapes: any, equal, e.g. (N, C, 16, frames).
    """
    d, u = delta.double(), direction.double()
    u_hat = u / torch.linalg.vector_norm(u, dim=dims, keepdim=True).clamp_min(1e-12)  # unit D per (item, channel)
    along = (d * u_hat).sum(dim=dims, keepdim=True) * u_hat
    return along.to(delta.dtype), (d - along).to(delta.dtype)


class AdaptiveProjectedGuidance:
    """APG for one sampling call: holds the momentum average Δ̄ across its guided steps.

    Call it once per guided step with the two predictions and that step's guidance scale w.
    """

    def __init__(self, momentum: float = MOMENTUM, norm_threshold: float = NORM_THRESHOLD,
                 parallel_weight: float = PARALLEL_WEIGHT, dims: tuple[int, ...] = REDUCE_DIMS):
        self.momentum, self.norm_threshold = momentum, norm_threshold
        self.parallel_weight, self.dims = parallel_weight, dims
        self.average: torch.Tensor | None = None  # Δ̄ of the previous guided step

    def __call__(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Guided prediction, same shape and dtype as `pred_cond`."""
        delta = pred_cond - pred_uncond
        if self.average is not None:
            delta = delta + self.momentum * self.average
        self.average = delta
        if self.norm_threshold > 0:
            length = torch.linalg.vector_norm(delta, dim=self.dims, keepdim=True)
            delta = delta * (self.norm_threshold / length).clamp(max=1.0)
        along, across = split_along(delta, pred_cond, self.dims)
        return pred_cond + (scale - 1) * (across + self.parallel_weight * along)


def classifier_free_guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain CFG: D(uncond) + w·(D(cond) − D(uncond))."""
    return pred_uncond + scale * (pred_cond - pred_uncond)
