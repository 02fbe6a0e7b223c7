"""ACE-Step v1 text-to-music sampler: noise → latents with guided flow-matching Euler steps.

Mirrors the text2music path of the reference's `ACEStepPipeline.text2music_diffusion_process`
(../shared/golden/README.md, "Sampler facts"):

1. frames = int(duration·44100/512/8); initial noise (N, 8, 16, frames), one generator per item.
2. Schedule: `inference_schedule(steps)` (shift 3 applied twice, final sigma 0).
3. Conditions: cond = encode(text, mask, speaker, lyrics); uncond = with ERG lyric
   encode(text_null or zeros, mask, zero speaker, lyrics) with the Conformer `linear_q` outputs
   ×0.01 in blocks 4 and 5, else encode(zeros, mask, zero speaker, zero ids, lyric mask).
4. Steps start ≤ i < end of the guidance interval: decode cond, then uncond (with ERG diffusion:
   `attn.to_q` and `cross_attn.to_q` outputs ×0.01 in transformer blocks 15..19), combined with APG
   (momentum shared by the whole call) or CFG at a scale that may decay towards the minimum. Other
   steps use the conditional prediction alone. Both decodes use the cond encoder mask.
5. Euler step with omega (`flow.euler_step`; the batch mean couples the items).

The ERG-tag text states (UMT5 with its q projections damped, `TextEncoder.encode_erg_null`) are an
input. Not mirrored: retake/repaint/extend, audio2audio, oss_steps, heun/pingpong schedulers,
double-condition guidance and CFG-zero*.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from diffusers.utils.torch_utils import randn_tensor

from acetune.models.v1.apg import AdaptiveProjectedGuidance, classifier_free_guidance
from acetune.models.v1.flow import SHIFT, euler_step, guidance_interval, guidance_scale_at, inference_schedule
from acetune.progress import progress

logger = logging.getLogger(__name__)

LATENT_FRAMES_PER_SECOND = 44100 / 512 / 8  # 44.1 kHz, hop 512, DCAE time factor 8 (≈ 10.77)
LATENT_SHAPE = (8, 16)  # (channels, height) of a v1 latent

ERG_TAU = 0.01  # "temperature" of the reference's forward_*_with_temperature hooks
ERG_LYRIC_BLOCKS = (4, 5)  # Conformer blocks (l_min=4, l_max=6)
ERG_DIFFUSION_BLOCKS = tuple(range(15, 20))  # transformer blocks (l_min=15, l_max=20)


def latent_frames(duration: float) -> int:
    """Latent frames for `duration` seconds, as the reference: int(duration·44100/512/8)."""
    return int(duration * 44100 / 512 / 8)


def generators_from_seeds(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded generator per batch item.

    CPU generators by default so a seed gives the same song on any device (`randn_tensor` draws on
    the CPU and moves the noise). The reference seeds generators on its own device, so on CUDA its
    noise for a seed differs from the CPU's.
    """
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@dataclass(frozen=True)
class SamplerSettings:
    """Guidance and schedule of one sampling call. Defaults are the reference's `__call__`/UI defaults."""

    infer_steps: int = 60
    guidance_scale: float = 15.0  # 0 or 1 turns guidance off (one model call per step)
    cfg_type: str = "apg"  # "apg" or "cfg"
    omega_scale: float = 10.0  # Euler omega, mapped to 0.9..1.1 by `flow.omega_rescale`
    guidance_interval: float = 0.5  # fraction of the steps, centred, that use guidance
    guidance_interval_decay: float = 0.0  # 1.0: the scale falls linearly to min_guidance_scale
    min_guidance_scale: float = 3.0
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    shift: float = SHIFT

    @classmethod
    def method_defaults(cls, **overrides) -> SamplerSettings:
        """Defaults of `text2music_diffusion_process` itself: decay 1.0, ERG lyric/diffusion off."""
        base = cls(guidance_interval_decay=1.0, use_erg_lyric=False, use_erg_diffusion=False)
        return replace(base, **overrides)

    def __post_init__(self):
        if self.cfg_type not in ("apg", "cfg"):
            raise ValueError(f"cfg_type must be 'apg' or 'cfg', not {self.cfg_type!r}")
        if self.infer_steps < 1:
            raise ValueError(f"infer_steps must be >= 1, got {self.infer_steps}")
        if not 0.0 <= self.guidance_interval <= 1.0:
            raise ValueError(f"guidance_interval must be in [0, 1], got {self.guidance_interval}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale not in (0.0, 1.0)


@contextlib.contextmanager
def scaled_outputs(modules: Iterable[torch.nn.Module], tau: float = ERG_TAU) -> Iterator[None]:
    """While active, multiply the outputs of `modules` by `tau` (forward hooks, removed on exit)."""

    def scale(_module, _inputs, output):
        return output * tau

    handles = [m.register_forward_hook(scale) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def erg_lyric_modules(model) -> list[torch.nn.Module]:
    """The Conformer query projections ERG lyric damps (blocks 4 and 5)."""
    layers = model.lyric_encoder.encoders
    if len(layers) <= max(ERG_LYRIC_BLOCKS):
        raise ValueError(f"ERG lyric needs >= {max(ERG_LYRIC_BLOCKS) + 1} lyric-encoder blocks, model has {len(layers)}")
    return [layers[i].self_attn.linear_q for i in ERG_LYRIC_BLOCKS]


def erg_diffusion_modules(model) -> list[torch.nn.Module]:
    """The self- and cross-attention query projections ERG diffusion damps (blocks 15..19)."""
    blocks = model.transformer_blocks
    if len(blocks) <= max(ERG_DIFFUSION_BLOCKS):
        raise ValueError(f"ERG diffusion needs >= {max(ERG_DIFFUSION_BLOCKS) + 1} transformer blocks, "
                         f"model has {len(blocks)}")
    return [m for i in ERG_DIFFUSION_BLOCKS for m in (blocks[i].attn.to_q, blocks[i].cross_attn.to_q)]


class _Calls:
    """Model calls, optionally recorded into `trace` as `encode_call.<k>` / `decode_call.<k>`."""

    def __init__(self, model, trace: dict | None):
        self.model, self.trace = model, trace
        self.n_encode = self.n_decode = 0

    def encode(self, *args):
        states, mask = self.model.encode(*args)
        if self.trace is not None:
            self.trace[f"encode_call.{self.n_encode}"] = states.detach().clone()
        self.n_encode += 1
        return states, mask

    def decode(self, latents, attention_mask, states, mask, timestep):
        # `[0]` is the sample both for a (sample, proj_losses) tuple and a diffusers BaseOutput.
        sample = self.model.decode(latents, attention_mask, states, mask, timestep,
                                   output_length=latents.shape[-1])[0]
        if self.trace is not None:
            self.trace[f"decode_call.{self.n_decode}"] = sample.detach().clone()
        self.n_decode += 1
        return sample


@torch.no_grad()
def text2music_latents(
    model,
    encoder_text_hidden_states: torch.Tensor,
    text_attention_mask: torch.Tensor,
    speaker_embeds: torch.Tensor,
    lyric_token_ids: torch.Tensor,
    lyric_mask: torch.Tensor,
    *,
    frames: int,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings = SamplerSettings(),
    encoder_text_hidden_states_null: torch.Tensor | None = None,
    trace: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sample latents (reference `text2music_diffusion_process`, text2music task).

    Args:
        model: `ACEStepTransformer2DModel` (or anything with its `encode`/`decode` and module names).
        encoder_text_hidden_states: UMT5 states (N, T_text, 768); text_attention_mask (N, T_text).
        speaker_embeds: (N, 512), zeros for the released checkpoint.
        lyric_token_ids / lyric_mask: (N, T_lyric); empty lyrics are ids [[0]] with mask [[0]].
        frames: latent width, `latent_frames(duration)`.
        generators: one per item (`generators_from_seeds`).
        settings: guidance and schedule.
        encoder_text_hidden_states_null: ERG-tag text states (N, T_text, 768) for the uncond encode
            with ERG lyric; None means zeros (ERG tag off).
        trace: if a dict is given, filled with `initial_noise`, `encode_call.<k>` (cond, uncond),
            `decode_call.<k>` (every decode in call order), `step.<i>.{timestep, sigma, sigma_next,
            sample_in, model_output, prev_sample}` (model_output = guided prediction), `final_latents`.
    Returns:
        latents (N, 8, 16, frames) in the model's dtype.
    """
    n = encoder_text_hidden_states.shape[0]
    if len(generators) != n:
        raise ValueError(f"need one generator per item: {n} items, {len(generators)} generators")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    calls = _Calls(model, trace)

    timesteps, sigmas = inference_schedule(settings.infer_steps, settings.shift)
    timesteps = timesteps.to(device)
    latents = randn_tensor((n, *LATENT_SHAPE, frames), generator=list(generators), device=device, dtype=dtype)
    attention_mask = torch.ones(n, frames, device=device, dtype=dtype)
    if trace is not None:
        trace["initial_noise"] = latents.clone()

    cond_states, cond_mask = calls.encode(
        encoder_text_hidden_states, text_attention_mask, speaker_embeds, lyric_token_ids, lyric_mask
    )
    uncond_states = None
    if settings.guided:  # the reference also encodes uncond when unguided, then never uses it
        uncond_states = _encode_uncond(model, calls, settings, encoder_text_hidden_states, text_attention_mask,
                                       speaker_embeds, lyric_token_ids, lyric_mask, encoder_text_hidden_states_null)

    start, end = guidance_interval(settings.infer_steps, settings.guidance_interval)
    apg = AdaptiveProjectedGuidance()  # one momentum average per sampling call
    erg_modules = erg_diffusion_modules(model) if settings.guided and settings.use_erg_diffusion else []
    for i in progress(range(settings.infer_steps), desc="sampling", unit="step"):
        t = timesteps[i]
        t_batch = t.expand(n)
        if settings.guided and start <= i < end:
            scale = guidance_scale_at(i, start, end, settings.guidance_scale, settings.min_guidance_scale,
                                      settings.guidance_interval_decay)
            pred_cond = calls.decode(latents, attention_mask, cond_states, cond_mask, t_batch)
            with scaled_outputs(erg_modules):
                pred_uncond = calls.decode(latents, attention_mask, uncond_states, cond_mask, t_batch)
            if settings.cfg_type == "apg":
                pred = apg(pred_cond, pred_uncond, scale)
            else:
                pred = classifier_free_guidance(pred_cond, pred_uncond, scale)
        else:
            pred = calls.decode(latents, attention_mask, cond_states, cond_mask, t_batch)

        prev = euler_step(latents, pred, sigmas[i], sigmas[i + 1], omega=settings.omega_scale)
        if trace is not None:
            trace.update({f"step.{i}.timestep": t.detach().cpu().clone(), f"step.{i}.sigma": sigmas[i].clone(),
                          f"step.{i}.sigma_next": sigmas[i + 1].clone(), f"step.{i}.sample_in": latents.clone(),
                          f"step.{i}.model_output": pred.clone(), f"step.{i}.prev_sample": prev.clone()})
        latents = prev
    if trace is not None:
        trace["final_latents"] = latents.clone()
    return latents


def _encode_uncond(model, calls: _Calls, settings: SamplerSettings, text, text_mask, speaker, lyric_ids, lyric_mask,
                   text_null) -> torch.Tensor:
    """Encoder states of the unconditional branch (only the states: decode uses the cond mask)."""
    if settings.use_erg_lyric:
        null_text = text_null if text_null is not None else torch.zeros_like(text)
        with scaled_outputs(erg_lyric_modules(model)):
            states, _ = calls.encode(null_text, text_mask, torch.zeros_like(speaker), lyric_ids, lyric_mask)
    else:
        states, _ = calls.encode(torch.zeros_like(text), text_mask, torch.zeros_like(speaker),
                                 torch.zeros_like(lyric_ids), lyric_mask)
    return states
