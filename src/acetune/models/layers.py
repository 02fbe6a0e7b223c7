"""Pieces that are identical across model families (kept deliberately small)."""

from __future__ import annotations

import math

import torch


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weightless RMSNorm over the last axis; the variance is taken in fp32, the result has x's dtype.

    Mirrors diffusers `RMSNorm(dim, eps, elementwise_affine=False)` (what the ACE-Step blocks use).
    """
    wide = x.float()  # once: a second cast would be another activation-sized copy (and its backward)
    variance = wide.pow(2).mean(-1, keepdim=True)
    return (wide * torch.rsqrt(variance + eps)).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation `x·(1 + scale) + shift` (Sana / PixArt `t2i_modulate`)."""
    return x * (1 + scale) + shift


def timestep_sinusoid(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """`[cos | sin]` timestep features (B, dim) in fp32, as diffusers `Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)` defines them.

    The frequencies exp(−ln(max_period)·i/(dim/2)) take the float32 exponent as diffusers does, but the
    exponential in float64, rounded once to float32: fp32 `exp` kernels differ by an ulp between CPUs,
    and with timesteps near 1000 one ulp moves sin/cos by ~3e-5, which would make results depend on the
    machine. (The golden vectors' machine agrees with the float64 values on all but 2 of 128 frequencies.)
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(exponent.double()).float()
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
