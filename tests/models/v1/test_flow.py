"""Flow-matching schedule, loss, Euler step and guidance rules (golden case `v1_flow` + unit checks)."""

from __future__ import annotations

import pytest
import torch

from acetune.models.v1.apg import AdaptiveProjectedGuidance, classifier_free_guidance, split_along
from acetune.models.v1.flow import (
    add_noise,
    euler_step,
    flow_matching_loss,
    guidance_interval,
    guidance_scale_at,
    inference_schedule,
    omega_rescale,
    sample_training_timesteps,
    training_schedule,
)
from acetune.parity.registry import run_case
from golden_checks import assert_rows_pass


def test_golden_v1_flow(golden):
    rows = assert_rows_pass(run_case("v1_flow", golden))
    assert len(rows) >= 28


def test_training_schedule_endpoints():
    sigmas, timesteps = training_schedule()
    assert sigmas.shape == timesteps.shape == (1000,)
    assert sigmas[0] == 1.0 and abs(sigmas[-1].item() - 0.002994012) < 1e-8
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_sample_training_timesteps_generator_and_global_rng():
    a = sample_training_timesteps(5, torch.Generator().manual_seed(3))
    b = sample_training_timesteps(5, torch.Generator().manual_seed(3))
    assert torch.equal(a.indices, b.indices) and a.indices.dtype == torch.int64
    sigmas, timesteps = training_schedule()
    assert torch.equal(a.sigmas, sigmas[a.indices]) and torch.equal(a.timesteps, timesteps[a.indices])
    # Without a generator the fork's global CPU RNG is used: u = normal(0, 1, (N,)).
    torch.manual_seed(11)
    u = torch.normal(0.0, 1.0, (4,))
    torch.manual_seed(11)
    c = sample_training_timesteps(4)
    assert torch.equal(c.indices, (torch.sigmoid(u) * 1000).long().clamp(0, 999))


def test_loss_is_the_forks_masked_mse():
    g = torch.Generator().manual_seed(0)
    x0, noise, v = (torch.randn(2, 8, 16, 10, generator=g) for _ in range(3))
    sigmas = torch.tensor([0.3, 0.9])
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0
    noisy = add_noise(x0, noise, sigmas)
    out = flow_matching_loss(v, noisy, x0, sigmas, mask, [("mert", torch.tensor(0.5)), ("m-hubert", torch.tensor(1.5))],
                             ssl_coeff=2.0)
    expected = []
    for i in range(2):
        pred = noisy[i] - sigmas[i] * v[i]
        m = mask[i].expand(8, 16, 10)
        expected.append((((pred - x0[i]) * m) ** 2).mean() * mask[i].mean())
    torch.testing.assert_close(out.denoising_loss, torch.stack(expected).mean())
    torch.testing.assert_close(out.loss, out.denoising_loss + 2.0)
    logged = out.log_values()
    assert list(logged) == ["train/denoising_loss", "train/mert_loss", "train/m-hubert_loss", "train/loss"]
    # A perfect velocity gives zero loss.
    perfect = flow_matching_loss(noise - x0, noisy, x0, sigmas, mask)
    assert perfect.loss.item() < 1e-10 and perfect.proj_losses == {}


def test_inference_schedule_and_guidance_interval():
    ts, sigmas = inference_schedule(8)
    assert ts.shape == (8,) and sigmas.shape == (9,) and sigmas[-1] == 0 and ts[0] == 1000
    assert abs(sigmas[-2].item() - 0.0089286) < 1e-6
    assert guidance_interval(8, 0.5) == (2, 6) and guidance_interval(60, 0.5) == (15, 45)
    assert guidance_interval(60, 1.0) == (0, 60)
    start, end = guidance_interval(8, 0.5)
    scales = [guidance_scale_at(i, start, end, 15.0, 3.0, decay=1.0) for i in range(start, end)]
    assert scales == [15.0, 11.0, 7.0, 3.0]
    assert guidance_scale_at(4, start, end, 15.0, 3.0, decay=0.0) == 15.0
    assert guidance_scale_at(0, 0, 1, 15.0, 3.0, decay=1.0) == 15.0  # reference divides by zero here
    with pytest.raises(ValueError):
        inference_schedule(0)


def test_euler_step_couples_the_batch_mean_and_keeps_dtype():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 8, 16, 4, generator=g), torch.randn(2, 8, 16, 4, generator=g)
    out = euler_step(x, v, 0.8, 0.6, omega=10.0)
    dx = -0.2 * v
    torch.testing.assert_close(out, x + (dx - dx.mean()) * omega_rescale(10.0) + dx.mean(), atol=1e-6, rtol=0)
    assert abs(omega_rescale(10.0) - 1.0462117157) < 1e-9
    torch.testing.assert_close(euler_step(x, v, 0.8, 0.6, omega=0.0), x + dx, atol=1e-6, rtol=0)
    assert euler_step(x, v.bfloat16(), 0.8, 0.6).dtype == torch.bfloat16


def test_apg_momentum_clip_and_projection():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(1, 8, 16, 5, generator=g), torch.randn(1, 8, 16, 5, generator=g)
    apg = AdaptiveProjectedGuidance()
    first = apg(cond, uncond, 15.0)
    torch.testing.assert_close(apg.average, cond - uncond)
    apg(cond, uncond, 15.0)
    torch.testing.assert_close(apg.average, (cond - uncond) * 0.25)  # d + (-0.75)·d
    # The guidance part is orthogonal to cond and at most (g - 1)·2.5 long per (item, channel).
    delta = (first - cond).double()
    assert (delta * cond).sum(dim=(-1, -2)).abs().max() < 1e-4
    assert delta.norm(dim=(-1, -2)).max() <= 14 * 2.5 + 1e-4
    par, orth = split_along(cond - uncond, cond)
    torch.testing.assert_close(par + orth, cond - uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)


def test_apg_small_guidance_is_not_clipped_and_keeps_the_parallel_part_with_eta():
    """Below the threshold the update is Δ itself; with η = 1 and no momentum APG is plain CFG."""
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(2, 8, 16, 5, generator=g, dtype=torch.float64)
    uncond = cond - 1e-3 * torch.randn(2, 8, 16, 5, generator=g, dtype=torch.float64)
    apg = AdaptiveProjectedGuidance(momentum=0.0, parallel_weight=1.0)
    torch.testing.assert_close(apg(cond, uncond, 7.0), classifier_free_guidance(cond, uncond, 7.0))
    along, across = split_along(cond - uncond, torch.zeros_like(cond))
    assert torch.equal(along, torch.zeros_like(cond)) and torch.equal(across, cond - uncond)
