"""ACE-Step v1 transformer (`ACEStepTransformer2DModel`), our own implementation.

Reads top-down: helpers, the patch embedding and final layer, then the model (the blocks live in
`blocks.py`). Mirrors the reference
`acestep/models/ace_step_transformer.py` and `attention.py` (facts: ../shared/golden/README.md,
"Transformer facts"); parameter names equal the official checkpoint's, so loading is a plain
state-dict copy and LoRA targets (`to_q`, `to_k`, `to_v`, `to_out.0`, `linear_q`, ...) mean what
they mean upstream. The lyric-encoder sizes the reference hardcodes are config keys here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from acetune.models.layers import modulate, timestep_sinusoid
from acetune.models.v1 import loading
from acetune.models.v1.attention import cross_attention_mask, rope_tables
from acetune.models.v1.blocks import LinearTransformerBlock
from acetune.models.v1.lyric_encoder import LyricEncoder


def _checkpoint(module: nn.Module, *args):
    """Default recompute-in-backward wrapper (diffusers installs the same when enabling checkpointing)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def tiny_transformer_config() -> dict:
    """The golden tiny config (../shared/golden/v1_transformer_tiny/config.json) as __init__ kwargs."""
    return dict(
        in_channels=8, num_layers=2, attention_head_dim=32, num_attention_heads=2, mlp_ratio=2.5,
        out_channels=8, max_position=32768, rope_theta=1000000.0, speaker_embedding_dim=16,
        text_embedding_dim=32, ssl_encoder_depths=[0, 1], ssl_names=["mert", "m-hubert"],
        ssl_latent_dims=[24, 16], patch_size=[16, 1], max_height=16, max_width=32768,
        lyric_encoder_vocab_size=6693, lyric_hidden_size=64, lyric_encoder_output_size=64,
        lyric_encoder_attention_heads=2, lyric_encoder_linear_units=128, lyric_encoder_num_blocks=2,
    )


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Conv2d(C→256C, kernel=stride=patch) → GroupNorm(32) → Conv2d 1×1 → (B, frames, W) (reference `PatchEmbed`)."""

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int]):
        super().__init__()
        wide = in_channels * 256
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(in_channels, wide, kernel_size=patch_size, stride=patch_size),
            nn.GroupNorm(32, wide, eps=1e-6, affine=True),
            nn.Conv2d(wide, dim, kernel_size=1),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        # contiguous: the residual stream would otherwise stay channel-major through every block (adds
        # keep their input's layout), and each Linear on it falls back to a bmm with a weight copy
        return self.early_conv_layers(latent).flatten(2).transpose(1, 2).contiguous()  # (B, H'·W', W)


class FinalLayer(nn.Module):
    """RMSNorm → modulate by the embedded timestep → Linear → unpatchify (reference `T2IFinalLayer`)."""

    def __init__(self, dim: int, patch_size: tuple[int, int], out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, patch_size[0] * patch_size[1] * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.patch_size, self.out_channels = tuple(patch_size), out_channels

    def forward(self, x: torch.Tensor, embedded_timestep: torch.Tensor, width: int) -> torch.Tensor:
        """x (B, S, W), embedded_timestep (B, W) -> (B, C, p_h, width), zero-padded or cropped to `width`."""
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.linear(modulate(F.rms_norm(x, (x.shape[-1],), eps=1e-6), shift, scale))
        b, s, _ = x.shape
        p_h, p_w = self.patch_size
        # feature f = (p·p_w + q)·C + c  ->  (B, C, p_h, S·p_w)
        out = x.reshape(b, s, p_h, p_w, self.out_channels).permute(0, 4, 2, 1, 3).reshape(b, self.out_channels, p_h, s * p_w)
        if width > out.shape[-1]:
            out = F.pad(out, (0, width - out.shape[-1]))
        return out[..., :width]


@dataclass
class Transformer2DModelOutput(BaseOutput):
    """`sample` (B, C, 16, frames); `proj_losses` list of (ssl name, scalar loss)."""

    sample: torch.Tensor
    proj_losses: list[tuple[str, torch.Tensor]] | None = None


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ACEStepTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The ACE-Step v1 diffusion transformer (3.5B with the defaults, which are the released config).

    `forward` = `encode` (speaker, text and lyric conditions -> encoder states) then `decode`
    (latents + timestep + encoder states -> velocity-like sample and SSL projection losses).
    `encode` can be called on its own so its output (or `encode_lyrics`) can be cached.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        num_layers: int = 24,
        inner_dim: int | None = None,  # in the official config.json; ignored (width = heads × head_dim)
        attention_head_dim: int = 128,
        num_attention_heads: int = 20,
        mlp_ratio: float = 2.5,
        out_channels: int = 8,
        max_position: int = 32768,  # size of the reference's RoPE cache; positions are not limited here
        rope_theta: float = 1000000.0,
        speaker_embedding_dim: int = 512,
        text_embedding_dim: int = 768,
        ssl_encoder_depths: list[int] = (8, 8),  # block index whose output each SSL projector reads
        ssl_names: list[str] = ("mert", "m-hubert"),
        ssl_latent_dims: list[int] = (1024, 768),
        lyric_encoder_vocab_size: int = 6693,
        lyric_hidden_size: int = 1024,
        patch_size: list[int] = (16, 1),
        max_height: int = 16,  # kept for the config; the reference's PatchEmbed stores but never uses it
        max_width: int = 32768,
        # hardcoded in the reference (ConformerEncoder defaults); must equal lyric_hidden_size
        lyric_encoder_output_size: int = 1024,
        lyric_encoder_attention_heads: int = 16,
        lyric_encoder_linear_units: int = 4096,
        lyric_encoder_num_blocks: int = 6,
    ):
        super().__init__()
        width = num_attention_heads * attention_head_dim
        self.inner_dim = width
        self.transformer_blocks = nn.ModuleList(
            [LinearTransformerBlock(width, num_attention_heads, attention_head_dim, mlp_ratio) for _ in range(num_layers)]
        )
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=width)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.speaker_embedder = nn.Linear(speaker_embedding_dim, width)
        self.genre_embedder = nn.Linear(text_embedding_dim, width)
        self.lyric_embs = nn.Embedding(lyric_encoder_vocab_size, lyric_hidden_size)
        self.lyric_encoder = LyricEncoder(
            lyric_hidden_size, lyric_encoder_output_size, lyric_encoder_attention_heads,
            lyric_encoder_linear_units, lyric_encoder_num_blocks,
        )
        self.lyric_proj = nn.Linear(lyric_hidden_size, width)
        self.projectors = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * width), nn.SiLU(),
                              nn.Linear(2 * width, dim))
                for dim in ssl_latent_dims
            ]
        )
        self.proj_in = PatchEmbed(in_channels, width, tuple(patch_size))
        self.final_layer = FinalLayer(width, tuple(patch_size), out_channels)
        self.gradient_checkpointing = False
        self.capture: dict[str, torch.Tensor] | None = None  # parity code sets a dict to record intermediates

    _gradient_checkpointing_func = staticmethod(_checkpoint)

    # ---- memory hooks -------------------------------------------------------------------------

    def drop_unused_projections(self) -> None:
        """Delete every `cross_attn.add_*` / `to_add_out` (never used by the forward: 19% of the official
        model's parameters, 1.26 GB in bf16)."""
        for block in self.transformer_blocks:
            block.cross_attn.drop_unused()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", drop_unused: bool = False, **kwargs):
        """Load an official `ace_step_transformer/` folder: config.json + safetensors (single or sharded).

        `torch_dtype`: parameter dtype (default float32); `drop_unused`: do not materialise the unused
        `cross_attn.add_*` projections. A folder that does not match raises a one-line CheckpointError
        naming the file and key (`acetune.models.v1.loading`).
        """
        if kwargs:
            raise TypeError(f"unsupported from_pretrained arguments: {', '.join(sorted(kwargs))}")
        return loading.load_transformer(cls, pretrained_model_name_or_path, dtype=torch_dtype or torch.float32,
                                        device=device, drop_unused=drop_unused)

    # ---- conditioning -------------------------------------------------------------------------

    def encode_lyrics(self, lyric_token_idx: torch.Tensor, lyric_mask: torch.Tensor) -> torch.Tensor:
        """Lyric ids (B, T) + mask (B, T) -> (B, T, W) (reference `forward_lyric_encoder`)."""
        embs = self.lyric_embs(lyric_token_idx)
        self._record("lyric_embs", embs)
        self.lyric_encoder.capture = None if self.capture is None else {}
        out = self.lyric_encoder(embs, lyric_mask)
        if self.capture is not None:
            self.capture.update({f"lyric_encoder.{k}": v for k, v in self.lyric_encoder.capture.items()})
            self.lyric_encoder.capture = None
        out = self.lyric_proj(out)
        self._record("lyric_proj.out", out)
        return out

    def encode(self, encoder_text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor,
               speaker_embeds: torch.Tensor, lyric_token_idx: torch.Tensor | None = None,
               lyric_mask: torch.Tensor | None = None, lyric_hidden_states: torch.Tensor | None = None):
        """Build the cross-attention context `[speaker (1) | text (T_text) | lyrics (T_lyric)]`.

        Args:
            encoder_text_hidden_states: UMT5 states (B, T_text, text_embedding_dim).
            text_attention_mask: (B, T_text), 1 = token.
            speaker_embeds: (B, speaker_embedding_dim).
            lyric_token_idx / lyric_mask: (B, T_lyric) ids and mask.
            lyric_hidden_states: optional cached `encode_lyrics` output (B, T_lyric, W), used instead of ids.
        Returns:
            encoder_hidden_states (B, 1 + T_text + T_lyric, W), encoder_hidden_mask (same length, float32).
        """
        b = encoder_text_hidden_states.shape[0]
        speaker = self.speaker_embedder(speaker_embeds).unsqueeze(1)  # (B, 1, W)
        text = self.genre_embedder(encoder_text_hidden_states)
        if lyric_hidden_states is None:
            lyric_hidden_states = self.encode_lyrics(lyric_token_idx, lyric_mask)
        states = torch.cat([speaker, text, lyric_hidden_states], dim=1)
        ones = torch.ones(b, 1, device=states.device, dtype=torch.float32)
        mask = torch.cat([ones, text_attention_mask.float(), lyric_mask.float()], dim=1)
        return states, mask

    # ---- diffusion -----------------------------------------------------------------------------

    def decode(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, encoder_hidden_states: torch.Tensor,
               encoder_hidden_mask: torch.Tensor, timestep: torch.Tensor,
               ssl_hidden_states: list | None = None, output_length: int = 0, return_dict: bool = True):
        """Denoise one step.

        Args:
            hidden_states: noisy latents (B, in_channels, 16, frames).
            attention_mask: (B, frames), 1 = real frame (masks linear attention and cross-attention).
            encoder_hidden_states / encoder_hidden_mask: from `encode`.
            timestep: (B,) in [0, 1000].
            ssl_hidden_states: per SSL source (order of `ssl_names`) a (B, T, d) tensor, a list of
                per-sample (T_i, d) tensors, or None to skip that source.
            output_length: width of the returned sample; 0 means the input width (the reference
                would return an empty tensor for 0).
        Returns:
            `Transformer2DModelOutput(sample (B, out_channels, 16, output_length), proj_losses)`, or
            the tuple `(sample, proj_losses)` with return_dict=False.
        """
        width = output_length or hidden_states.shape[-1]
        t_freq = timestep_sinusoid(timestep, 256).to(dtype=hidden_states.dtype)  # (B, 256) (reference `time_proj`)
        embedded_timestep = self.timestep_embedder(t_freq)  # (B, W)
        temb = self.t_block(embedded_timestep)  # (B, 6W)
        x = self.proj_in(hidden_states)  # (B, S, W)
        for name, value in (("time_proj.out", t_freq), ("embedded_timestep", embedded_timestep),
                            ("temb", temb), ("proj_in.out", x)):
            self._record(name, value)

        cfg = self.config
        rope = rope_tables(x.shape[1], cfg.attention_head_dim, cfg.rope_theta, x.device)
        rope_context = rope_tables(encoder_hidden_states.shape[1], cfg.attention_head_dim, cfg.rope_theta, x.device)
        # shared by every block: the cross-attention mask, and the linear attention's frame mask (None when
        # every frame is real: multiplying q, k, v by ones is exact, so it is skipped)
        allowed = cross_attention_mask(attention_mask, encoder_hidden_mask)
        frame_mask = None if _all_set(attention_mask) else attention_mask
        captured = []  # block outputs the SSL projectors read, in block order (as the reference collects them)
        for i, block in enumerate(self.transformer_blocks):
            args = (x, frame_mask, encoder_hidden_states, allowed, temb, rope, rope_context)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args)
            self._record(f"transformer_blocks.{i}", x)
            captured += [x] * sum(1 for d in cfg.ssl_encoder_depths if d == i)

        proj_losses = []
        if captured and ssl_hidden_states:
            for k, (inner, projector, targets, name) in enumerate(
                zip(captured, self.projectors, ssl_hidden_states, cfg.ssl_names)
            ):
                if targets is None:
                    continue
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    # recomputed in the backward like the blocks: otherwise the projector's hidden states and
                    # the loss's 75 Hz intermediates stay saved through the whole backward (0.3 GB at 360 s)
                    loss = torch.utils.checkpoint.checkpoint(projected_loss, projector, inner, targets,
                                                             use_reentrant=False)
                else:
                    predicted = projector(inner)  # (B, S, d)
                    self._record(f"projectors.{k}", predicted)
                    loss = ssl_projection_loss(predicted, targets)
                proj_losses.append((name, loss))

        sample = self.final_layer(x, embedded_timestep, width)
        self._record("final_layer.out", sample)
        if not return_dict:
            return sample, proj_losses
        return Transformer2DModelOutput(sample=sample, proj_losses=proj_losses)

    def forward(self, hidden_states, attention_mask, encoder_text_hidden_states, text_attention_mask,
                speaker_embeds, lyric_token_idx, lyric_mask, timestep, ssl_hidden_states=None,
                return_dict: bool = True):
        """`encode` then `decode` at the input width (arguments as documented there)."""
        states, mask = self.encode(encoder_text_hidden_states, text_attention_mask, speaker_embeds,
                                   lyric_token_idx, lyric_mask)
        return self.decode(hidden_states, attention_mask, states, mask, timestep, ssl_hidden_states,
                           output_length=hidden_states.shape[-1], return_dict=return_dict)

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.capture is not None:
            self.capture[name] = value.detach()


def default_config() -> dict:
    """The constructor defaults: the released 3.5B config plus the official lyric-encoder sizes."""
    return loading.constructor_defaults(ACEStepTransformer2DModel)


def build_transformer(kwargs: dict, device: str | torch.device = "meta") -> ACEStepTransformer2DModel:
    """Construct the model (on the meta device by default: no memory, no init cost)."""
    with torch.device(device):
        return ACEStepTransformer2DModel(**kwargs)


def _all_set(mask: torch.Tensor) -> bool:
    """True when a 0/1 mask is all ones (False on the meta device, where values are unknown)."""
    return mask.device.type != "meta" and bool(mask.all())


def projected_loss(projector: nn.Module, inner: torch.Tensor, targets) -> torch.Tensor:
    """`ssl_projection_loss(projector(inner), targets)` (a plain function, for checkpointing)."""
    return ssl_projection_loss(projector(inner), targets)


def ssl_projection_loss(predicted: torch.Tensor, targets) -> torch.Tensor:
    """Mean over samples of mean_t(1 − cos(target_t, interp(predicted)_t)) (reference `decode`).

    predicted (B, S, d) is linearly resized (align_corners False) to each target's length T_i;
    targets: (B, T, d) or a list of (T_i, d). No mask: every frame counts, as in the reference.
    """
    total = 0.0
    for z_hat, z in zip(predicted, targets):
        # (T_i, d) made contiguous once: the normalise/multiply/sum below and their backward run over the
        # feature axis, and on the transposed view every one of those T_i x d kernels strides (2x slower)
        z_hat = F.interpolate(z_hat.T[None], size=z.shape[0], mode="linear", align_corners=False)[0].T.contiguous()
        cos = (F.normalize(z_hat, dim=-1) * F.normalize(z.to(z_hat.dtype), dim=-1)).sum(-1)
        total = total + (1 - cos).mean()
    return total / predicted.shape[0]
