"""The ACE-Step 1.5 training objective: flow matching on the turbo schedule's discrete timesteps.

Mirrors the official 1.5 trainer (`acestep/training/trainer.py`, `PreprocessedLoRAModule.
training_step` and `sample_discrete_timestep`):

- t is drawn uniformly from the 8 timesteps the turbo model is sampled at (shift 3):
  `TURBO_SHIFT3_TIMESTEPS`, equal to `shifted_schedule(8, 3.0)`; the mean-flow reference r = t;
- x_t = t * noise + (1 - t) * x0 (t = 1 is pure noise);
- the DiT predicts the velocity noise - x0; loss = mean squared error.

The official loss is a plain mean over (B, T, C) at batch size 1; here padded frames of a batch
are masked out, which is the same number at batch size 1.

Context latents (what `AceStepTransformer1DModel` concatenates before the noisy latents) are the
text2music ones, as `build_context_latents` in the official preprocess: the checkpoint's
`silence_latent` (tiled to T frames) followed by an all-ones chunk mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The official trainer's table (`TURBO_SHIFT3_TIMESTEPS`), kept verbatim so a parity test can
# compare it with the formula below.
TURBO_SHIFT3_TIMESTEPS = (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3)


def shifted_schedule(num_steps: int = 8, shift: float = 3.0) -> torch.Tensor:
    """Inference timesteps, as `AceStepPipeline._get_timestep_schedule`: t' = s t / (1 + (s - 1) t).

    Returns (num_steps,) float64 from 1.0 down (the terminal 0 is dropped).
    """
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t))[:-1]


def timestep_from_normal(u: torch.Tensor, shift: float = 3.0) -> torch.Tensor:
    """A standard-normal draw -> t = shift s / (1 + (shift - 1) s), s = sigmoid(u) (u = 0 gives 0.75).

    Only for callers that pin the timestep with a normal draw (the shared loop's overfit check passes
    u = 0, v1's median timestep); training itself samples `TURBO_SHIFT3_TIMESTEPS`.
    """
    s = torch.sigmoid(u.float())
    return shift * s / (1 + (shift - 1) * s)


def sample_timesteps(batch_size: int, generator: torch.Generator | None = None,
                     table: tuple[float, ...] = TURBO_SHIFT3_TIMESTEPS) -> torch.Tensor:
    """(B,) float32 timesteps drawn uniformly from `table` (official `sample_discrete_timestep`)."""
    idx = torch.randint(0, len(table), (batch_size,), generator=generator)
    return torch.tensor(table, dtype=torch.float32)[idx]


def context_latents(silence_latent: torch.Tensor, length: int) -> torch.Tensor:
    """(T, 2C) text2music context: silence latent tiled to `length` frames, then a ones chunk mask.

    Args:
        silence_latent: (1, N, C) or (N, C), `AceStepConditionEncoder.silence_latent`.
    """
    silence = silence_latent.reshape(-1, silence_latent.shape[-1]).float()
    repeats = -(-length // silence.shape[0])
    src = silence.repeat(repeats, 1)[:length]
    return torch.cat([src, torch.ones_like(src)], dim=-1)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Pad rows into a batch with the v1 trainer's key names (`training.data.make_batch` gives the same).

    Args:
        rows: dicts with "latents" (C, T_i) (channel-first, as stored) and "encoder_states" (L_i, D).
    Returns:
        target_latents (B, C, T), attention_mask (B, T), encoder_text_hidden_states (B, L, D) zero-padded,
        text_attention_mask (B, L). `AceStepTransformer1DModel` takes no cross-attention mask, so batches
        mixing lengths attend to a few padding tokens (exact at batch size 1, the official default).
    """
    max_t = max(r["latents"].shape[-1] for r in rows)
    max_l = max(r["encoder_states"].shape[0] for r in rows)
    c, d = rows[0]["latents"].shape[0], rows[0]["encoder_states"].shape[1]
    batch = {"target_latents": torch.zeros(len(rows), c, max_t), "attention_mask": torch.zeros(len(rows), max_t),
             "encoder_text_hidden_states": torch.zeros(len(rows), max_l, d),
             "text_attention_mask": torch.zeros(len(rows), max_l)}
    for i, r in enumerate(rows):
        t, n = r["latents"].shape[-1], r["encoder_states"].shape[0]
        batch["target_latents"][i, :, :t] = r["latents"].float()
        batch["attention_mask"][i, :t] = 1.0
        batch["encoder_text_hidden_states"][i, :n] = r["encoder_states"].float()
        batch["text_attention_mask"][i, :n] = 1.0
    return batch


@dataclass
class V15Loss:
    """Loss terms of one step, shaped like `models.v1.flow.FlowLoss` (1.5 has no SSL terms)."""

    loss: torch.Tensor
    denoising_loss: torch.Tensor
    proj_losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def log_values(self, prefix: str = "train") -> dict[str, float]:
        """`train/denoising_loss`, `train/loss`; `.item()` is a device-to-host sync."""
        return {f"{prefix}/denoising_loss": self.denoising_loss.item(), f"{prefix}/loss": self.loss.item()}


def flow_matching_loss(transformer: torch.nn.Module, batch: dict[str, torch.Tensor], silence_latent: torch.Tensor,
                       null_condition: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> V15Loss:
    """One training forward (official `PreprocessedLoRAModule.training_step`); loss in fp32.

    Args:
        transformer: `AceStepTransformer1DModel` (with adapters).
        batch: keys of `collate` (v1 names), on any device.
        silence_latent: (1, N, C) for the context latents.
        null_condition: (1, 1, D) `null_condition_emb`; replaces the condition of rows whose condition was
            zeroed by condition dropout (the pipeline's CFG null input). None: zeroed rows stay zero.
        generator: CPU generator for noise and t (None: the global RNG).
        noise: (B, C, T) replaces the noise draw; t: (B,) replaces the timestep draw (parity tests).
    """
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    x0 = batch["target_latents"].to(device=device, dtype=torch.float32).transpose(1, 2)  # (B, T, C)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    else:
        noise = noise.transpose(1, 2)
    if t is None:
        t = sample_timesteps(x0.shape[0], generator)
    noise, t = noise.to(device=device, dtype=torch.float32), t.to(device=device, dtype=torch.float32)
    states = batch["encoder_text_hidden_states"].to(device=device, dtype=dtype)
    if null_condition is not None:
        dropped = (states == 0).flatten(1).all(dim=1)  # (B,)
        states = torch.where(dropped[:, None, None], null_condition.to(states).expand_as(states), states)
    context = context_latents(silence_latent, x0.shape[1]).to(device=device, dtype=dtype)
    t_ = t[:, None, None]
    xt = t_ * noise + (1.0 - t_) * x0
    pred = transformer(hidden_states=xt.to(dtype), timestep=t.to(dtype), timestep_r=t.to(dtype),
                       encoder_hidden_states=states, context_latents=context.expand(x0.shape[0], -1, -1),
                       return_dict=False)[0]
    mask = batch["attention_mask"].to(device=device, dtype=torch.float32)[..., None]
    err = (pred.float() - (noise - x0)) ** 2 * mask
    loss = err.sum() / (mask.sum() * x0.shape[-1]).clamp_min(1.0)
    return V15Loss(loss=loss, denoising_loss=loss)
