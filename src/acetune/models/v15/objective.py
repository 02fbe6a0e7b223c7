"""The ACE-Step 1.5 training objective: flow matching with one of two recipes, chosen per checkpoint variant.

Both recipes share the step: x_t = t * x1 + (1 - t) * x0 (x1 = noise, t = 1 is pure noise), the DiT
predicts the velocity x1 - x0 at (t, r = t), and the loss is the plain mean squared error over every
element of the batch, padding included (the official decoder ignores both masks, so padded frames
and padded condition tokens take part exactly as they do there). They differ in t and condition dropout:

- `discrete` (turbo; official `acestep/training/trainer.py`, `PreprocessedLoRAModule.training_step`):
  t uniform over the 8 timesteps the turbo model is sampled at (`TURBO_SHIFT3_TIMESTEPS`), no
  condition dropout. Random draws: noise, then the table index.
- `logit_normal` (base / sft; official corrected trainer `acestep/training_v2`, `FixedLoRAModule.
  training_step` with `timestep_sampling.sample_timesteps` / `apply_cfg_dropout`): t is the larger of
  two draws sigmoid(n * sigma + mu) (mu -0.4, sigma 1.0), and with probability `cfg_dropout` (0.15)
  a row's whole condition is replaced by the checkpoint's `null_condition_emb` (the CFG null input).
  Random draws: the dropout uniforms (only when cfg_dropout > 0), the noise, the two normals.

Every draw comes from the CPU generator given (or the global CPU RNG) in the official order, so a
step on CPU reproduces the official step bit for bit (tests/models/v15/golden/). Context latents
(what the DiT concatenates before the noisy latents) are the text2music ones the official preprocess
writes: the checkpoint's `silence_latent` (tiled to T frames) followed by an all-ones chunk mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The official trainer's table (`TURBO_SHIFT3_TIMESTEPS`), kept verbatim so a parity test can
# compare it with the formula below.
TURBO_SHIFT3_TIMESTEPS = (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3)


TIMESTEP_SAMPLINGS = ("discrete", "logit_normal")
VARIANTS = ("turbo", "base", "sft")
# training_v2 defaults (`TrainingConfigV2` / `AceStepConfig`: timestep_mu, timestep_sigma, cfg_ratio)
LOGIT_NORMAL_MU = -0.4
LOGIT_NORMAL_SIGMA = 1.0
CFG_DROPOUT = 0.15


@dataclass(frozen=True)
class Recipe:
    """How one training step draws t and drops the condition (see the module docstring)."""

    timestep_sampling: str = "discrete"
    cfg_dropout: float = 0.0
    mu: float = LOGIT_NORMAL_MU
    sigma: float = LOGIT_NORMAL_SIGMA


def default_recipe(variant: str, mu: float = LOGIT_NORMAL_MU, sigma: float = LOGIT_NORMAL_SIGMA) -> Recipe:
    """turbo: the discrete table without dropout; base / sft: training_v2 (logit-normal, CFG dropout 0.15)."""
    if variant == "turbo":
        return Recipe("discrete", 0.0, mu, sigma)
    return Recipe("logit_normal", CFG_DROPOUT, mu, sigma)


def shifted_schedule(num_steps: int = 8, shift: float = 3.0) -> torch.Tensor:
    """Inference timesteps, as `AceStepPipeline._get_timestep_schedule`: t' = s t / (1 + (s - 1) t).

    Returns (num_steps,) float64 from 1.0 down (the terminal 0 is dropped).
    """
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t))[:-1]


def timestep_from_normal(u: torch.Tensor, shift: float = 3.0) -> torch.Tensor:
    """A standard-normal draw -> t = shift s / (1 + (shift - 1) s), s = sigmoid(u) (u = 0 gives 0.75).

    Only for callers that pin the timestep with a normal draw (the shared loop's overfit check passes
    u = 0, v1's median timestep); training samples t as its `Recipe` says.
    """
    s = torch.sigmoid(u.float())
    return shift * s / (1 + (shift - 1) * s)


def sample_timesteps(batch_size: int, generator: torch.Generator | None = None,
                     table: tuple[float, ...] = TURBO_SHIFT3_TIMESTEPS) -> torch.Tensor:
    """(B,) float32 timesteps drawn uniformly from `table` (official `sample_discrete_timestep`)."""
    idx = torch.randint(0, len(table), (batch_size,), generator=generator)
    return torch.tensor(table, dtype=torch.float32)[idx]


def sample_logit_normal(batch_size: int, generator: torch.Generator | None = None, mu: float = LOGIT_NORMAL_MU,
                        sigma: float = LOGIT_NORMAL_SIGMA) -> torch.Tensor:
    """(B,) float32 t = max of two sigmoid(n * sigma + mu) draws (training_v2 `sample_timesteps`; its r, the
    smaller draw, is replaced by t for every ACE-Step variant, so only the max is returned)."""
    first = torch.sigmoid(torch.randn(batch_size, generator=generator) * sigma + mu)
    second = torch.sigmoid(torch.randn(batch_size, generator=generator) * sigma + mu)
    return torch.maximum(first, second)


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
        text_attention_mask (B, L). Neither mask reaches the model or the loss: the official decoder ignores both, so
        batches mixing lengths attend to (and are scored on) their zero padding there too.
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
                       null_condition: torch.Tensor | None = None, recipe: Recipe | None = None,
                       generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                       t: torch.Tensor | None = None) -> V15Loss:
    """One training forward under `recipe`; loss in fp32.

    Args:
        transformer: `AceStepTransformer1DModel` (with adapters).
        batch: keys of `collate` (v1 names), on any device.
        silence_latent: (1, N, C) for the context latents.
        null_condition: (1, 1, D) `null_condition_emb`, what a dropped condition becomes. None: no dropout.
        recipe: timestep sampling and CFG dropout probability (None: `Recipe()`, the turbo one).
        generator: CPU generator for every draw (None: the global CPU RNG).
        noise: (B, C, T) and t: (B,) pin the draws (overfit check, tests); with `t` given nothing is dropped.
    """
    recipe = recipe or Recipe()
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    x0 = batch["target_latents"].to(device=device, dtype=torch.float32).transpose(1, 2)  # (B, T, C)
    bsz = x0.shape[0]
    states = batch["encoder_text_hidden_states"].to(device=device, dtype=dtype)
    # 1. CFG dropout uniforms (drawn first, as training_v2 does, and only when dropout is on)
    if t is None and null_condition is not None and recipe.cfg_dropout > 0:
        dropped = (torch.rand(bsz, generator=generator) < recipe.cfg_dropout).to(device)  # (B,)
        states = torch.where(dropped[:, None, None], null_condition.to(states).expand_as(states), states)
    # 2. noise, 3. t
    noise = torch.randn(x0.shape, generator=generator) if noise is None else noise.transpose(1, 2)
    if t is None:
        t = (sample_timesteps(bsz, generator) if recipe.timestep_sampling == "discrete"
             else sample_logit_normal(bsz, generator, recipe.mu, recipe.sigma))
    noise, t = noise.to(device=device, dtype=torch.float32), t.to(device=device, dtype=torch.float32)
    context = context_latents(silence_latent, x0.shape[1]).to(device=device, dtype=dtype)
    t_ = t[:, None, None]
    xt = t_ * noise + (1.0 - t_) * x0
    pred = transformer(hidden_states=xt.to(dtype), timestep=t.to(dtype), timestep_r=t.to(dtype),
                       encoder_hidden_states=states, context_latents=context.expand(bsz, -1, -1),
                       return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(pred.float(), noise - x0)  # plain mean, padding included (official)
    return V15Loss(loss=loss, denoising_loss=loss)
