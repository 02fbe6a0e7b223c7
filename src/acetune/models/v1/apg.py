"""Guidance rules of the ACE-Step v1 sampler: APG (default) and plain CFG.

APG = adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of
High Guidance Scales in Diffusion Models"), with the constants of the reference's
`acestep/apg_guidance.py`: momentum −0.75, norm threshold 2.5, eta 0, norms and projection over the
last two axes (16, frames) per (item, channel), projection in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_DIMS = (-1, -2)


class MomentumBuffer:
    """Running sum of guidance directions: running = update + momentum·running (starts at 0).

    One buffer per sampling call; it persists across the guided steps of that call.
    """

    def __init__(self, momentum: float = APG_MOMENTUM):
        self.momentum = momentum
        self.running_average: torch.Tensor | float = 0.0

    def update(self, update_value: torch.Tensor) -> torch.Tensor:
        self.running_average = update_value + self.momentum * self.running_average
        return self.running_average


def project(v0: torch.Tensor, v1: torch.Tensor, dims: Sequence[int] = APG_DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split v0 into parts parallel and orthogonal to v1 over `dims`, computed in float64.

    Returns (parallel, orthogonal) in v0's dtype. v0, v1: (N, C, H, W).
    """
    dtype = v0.dtype
    v0, v1 = v0.double(), v1.double()
    v1 = F.normalize(v1, dim=list(dims))
    parallel = (v0 * v1).sum(dim=list(dims), keepdim=True) * v1
    return parallel.to(dtype), (v0 - parallel).to(dtype)


def apg_forward(
    pred_cond: torch.Tensor,
    pred_uncond: torch.Tensor,
    guidance_scale: float,
    momentum_buffer: MomentumBuffer | None = None,
    eta: float = 0.0,
    norm_threshold: float = APG_NORM_THRESHOLD,
    dims: Sequence[int] = APG_DIMS,
) -> torch.Tensor:
    """APG guided prediction (reference `apg_forward`).

    diff = cond − uncond → momentum → clipped to L2 norm `norm_threshold` over `dims` → split against
    cond → cond + (g − 1)·(orthogonal + eta·parallel). Shapes (N, C, H, W).
    """
    diff = pred_cond - pred_uncond
    if momentum_buffer is not None:
        diff = momentum_buffer.update(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=list(dims), keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    parallel, orthogonal = project(diff, pred_cond, dims)
    return pred_cond + (guidance_scale - 1) * (orthogonal + eta * parallel)


def cfg_forward(cond_output: torch.Tensor, uncond_output: torch.Tensor, cfg_strength: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g·(cond − uncond) (reference `cfg_forward`)."""
    return uncond_output + cfg_strength * (cond_output - uncond_output)
