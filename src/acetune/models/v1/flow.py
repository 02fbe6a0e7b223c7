"""Flow-matching schedule of ACE-Step v1: training noise levels, the loss, inference steps.

Conventions (../shared/golden/README.md "Training step facts" and "Sampler facts"): sigma 1 is pure
noise, sigma 0 the clean latent, timestep = 1000·sigma; noisy = sigma·noise + (1 − sigma)·x0. The
model predicts a velocity v and x0 ≈ noisy − sigma·v.

The schedules come from diffusers' `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
shift=3.0)`, which the reference uses and which reproduces its sigmas bit for bit. Written here by
hand: the logit-normal index mapping and the loss (they live in the fork's trainer, not in the
scheduler) and the Euler step with omega (ACE-Step's own scheduler copy adds omega; diffusers' has no
such argument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

NUM_TRAIN_TIMESTEPS = 1000
SHIFT = 3.0  # trainer `--shift` default and the pipeline's scheduler


def make_scheduler(shift: float = SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """A fresh diffusers scheduler configured as the reference's (T=1000, shift 3)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def training_schedule(shift: float = SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1000 training noise levels, most noisy first.

    Returns:
        sigmas (1000,) float32: shift·s / (1 + (shift − 1)·s) for s = 1000/1000 … 1/1000
            (sigmas[0] = 1, sigmas[999] = 0.002994 at shift 3).
        timesteps (1000,) float32: sigmas · 1000.
    """
    sched = make_scheduler(shift)
    return sched.sigmas[:NUM_TRAIN_TIMESTEPS].clone(), sched.timesteps.clone()


# ---- training ----

class TrainingTimesteps(NamedTuple):
    indices: torch.Tensor  # (N,) int64 into the training schedule
    timesteps: torch.Tensor  # (N,) float32, what the model is given
    sigmas: torch.Tensor  # (N,) float32 noise levels


def timestep_indices_from_u(u: torch.Tensor) -> torch.Tensor:
    """Logit-normal mapping of the fork's `get_timestep`: clamp(floor(sigmoid(u)·1000), 0, 999).

    Larger u → larger index → smaller sigma (less noise). `.long()` truncates, i.e. floors the
    non-negative products.
    """
    idx = (torch.sigmoid(u) * NUM_TRAIN_TIMESTEPS).long()
    return idx.clamp(0, NUM_TRAIN_TIMESTEPS - 1)


def sample_training_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    *,
    shift: float = SHIFT,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> TrainingTimesteps:
    """Draw one training timestep per item, as the fork's `get_timestep` ("logit_normal", SD3 §3.1).

    u ~ N(logit_mean, logit_std²) of size (batch,) on the CPU (the global RNG when `generator` is
    None, as the fork). The fork draws the noise (`randn_like(x0)`) *before* calling this; keep that
    order to reproduce its runs. Sigma is taken by index; the fork looks it up by exact match of the
    timestep value, which selects the same entry (the schedule has no repeated values).
    """
    u = torch.normal(mean=logit_mean, std=logit_std, size=(batch,), generator=generator, device="cpu")
    indices = timestep_indices_from_u(u)
    sigmas, timesteps = training_schedule(shift)
    return TrainingTimesteps(indices, timesteps[indices], sigmas[indices])


def _expand(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) → (N, 1, 1, 1) in `like`'s dtype and device (the fork's `get_sd3_sigmas`)."""
    sigmas = sigmas.to(device=like.device, dtype=like.dtype).flatten()
    return sigmas.view(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """noisy = sigma·noise + (1 − sigma)·x0, with sigmas (N,) cast to x0's dtype. x0: (N, 8, 16, W)."""
    s = _expand(sigmas, x0)
    return s * noise + (1.0 - s) * x0


@dataclass
class FlowLoss:
    """Loss terms of one training step (scalars, with grad)."""

    loss: torch.Tensor  # denoising + ssl_coeff · mean(proj_losses)
    denoising_loss: torch.Tensor
    proj_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"mert": …, "m-hubert": …}

    def log_values(self, prefix: str = "train") -> dict[str, float]:
        """The fork's logged names: `train/denoising_loss`, `train/<ssl>_loss`, `train/loss`.

        Calls `.item()`: a device-to-host sync.
        """
        out = {f"{prefix}/denoising_loss": self.denoising_loss.item()}
        out.update({f"{prefix}/{k}_loss": v.item() for k, v in self.proj_losses.items()})
        out[f"{prefix}/loss"] = self.loss.item()
        return out


def flow_matching_loss(
    model_output: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    attention_mask: torch.Tensor,
    proj_losses: list[tuple[str, torch.Tensor]] | dict[str, torch.Tensor] = (),
    ssl_coeff: float = 1.0,
) -> FlowLoss:
    """The fork's `run_step` loss, exactly as coded.

    Args:
        model_output: (N, 8, 16, W) transformer output (velocity).
        noisy: (N, 8, 16, W) the model input; x0: (N, 8, 16, W) the clean latents (the target).
        sigmas: (N,) noise levels of the step.
        attention_mask: (N, W) latent frame mask (1 valid, 0 padding).
        proj_losses: the transformer's SSL projection losses, (name, value) pairs.
        ssl_coeff: weight of the mean SSL loss (`--ssl_coeff`, 1.0).

    Preconditioning (EDM §5 as the fork cites it): pred = model_output·(−sigma) + noisy, an x0 guess.
    Masked MSE: loss_i = mean over all 8·16·W elements of ((pred − x0)·m)², times mean_W(m_i);
    denoising = mean_i loss_i. Not a true masked mean (padded elements stay in the denominator and
    the valid fraction multiplies again), kept for parity with trained LoRAs.
    """
    n = x0.shape[0]
    s = _expand(sigmas, model_output)
    pred = model_output * (-s) + noisy
    mask = attention_mask.to(pred.dtype)[:, None, None, :].expand(-1, x0.shape[1], x0.shape[2], -1)
    per_item = F.mse_loss((pred * mask).reshape(n, -1), (x0 * mask).reshape(n, -1), reduction="none").mean(1)
    denoising = (per_item * mask.reshape(n, -1).mean(1)).mean()

    proj = dict(proj_losses)
    total = denoising
    if proj:
        total = denoising + (sum(proj.values()) / len(proj)) * ssl_coeff
    return FlowLoss(total, denoising, proj)


# ---- inference ----

def inference_schedule(num_steps: int, shift: float = SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (n,) and sigmas (n + 1,) of an n-step sampling run (diffusers `set_timesteps`).

    linspace(1000·sigma_max, 1000·sigma_min, n)/1000 of the already-shifted training range, shifted
    a second time, then a final sigma 0. 8 steps: last nonzero sigma 0.00893.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sched = make_scheduler(shift)
    sched.set_timesteps(num_steps)
    return sched.timesteps.clone(), sched.sigmas.clone()


def omega_rescale(omega: float) -> float:
    """The scheduler's logistic map of omega_scale: 0.9 + 0.2 / (1 + e^(−0.1·ω)) (1.046212 at ω=10)."""
    return 0.9 + 0.2 / (1.0 + math.exp(-0.1 * float(omega)))


def euler_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    omega: float = 0.0,
) -> torch.Tensor:
    """One Euler step with ACE-Step's omega (`FlowMatchEulerDiscreteScheduler.step` of the reference).

    dx = (sigma_next − sigma)·v; m = mean(dx) over the **whole batch tensor** (items are coupled);
    x ← x + (dx − m)·ω' + m with ω' = omega_rescale(omega). The sample is taken in float32 and the
    result returned in the prediction's dtype. sample, model_output: (N, 8, 16, W).
    """
    # 0-dim float32 tensors, as the scheduler's own sigma table: the difference is then rounded
    # in float32 exactly like the reference.
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32)
    x = sample.to(torch.float32)
    dx = (sigma_next - sigma).to(model_output.device) * model_output
    m = dx.mean()
    prev = x + ((dx - m) * omega_rescale(omega) + m)
    return prev.to(model_output.dtype)


def guidance_interval(num_steps: int, interval: float = 0.5) -> tuple[int, int]:
    """Steps [start, end) that use guidance: start = int(n·(1 − gi)/2), end = int(n·(gi/2 + 0.5))."""
    return int(num_steps * ((1 - interval) / 2)), int(num_steps * (interval / 2 + 0.5))


def guidance_scale_at(
    step: int, start: int, end: int, scale: float, min_scale: float = 3.0, decay: float = 0.0
) -> float:
    """The guidance scale of step `step` inside [start, end): linear from `scale` towards `min_scale`.

    g − (g − g_min)·(i − start)/(end − start − 1)·decay. With a single guided step the reference
    divides by zero; here that step simply gets `scale`.
    """
    if decay <= 0:
        return scale
    span = end - start - 1
    progress = (step - start) / span if span > 0 else 0.0
    return scale - (scale - min_scale) * progress * decay
