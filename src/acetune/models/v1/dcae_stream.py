"""Long inputs through the DCAE in windows, equal to one pass up to float rounding, memory flat in duration.

Why plain windows are not exact: the DCAE (diffusers `AutoencoderDC`, official config) is

    encoder: conv_in -> stages 0-2 (ResBlocks, stride-2 conv downsamples) -> stage 3 (EfficientViT blocks)
             -> conv_out + channel-average shortcut
    decoder: conv_in + channel-repeat shortcut -> stage 3 (EfficientViT blocks)
             -> stages 2-0 (nearest-upsample + conv, ResBlocks) -> RMSNorm, ReLU, conv_out

Everything is local (3x3 / 5x5 convolutions, per-pixel norms; the encoder front sees ~44 mel frames =
5.5 latent frames, the decoder back ~6 latent frames) except the linear attention of each EfficientViT
block, which sums key/value statistics over every position of its input: a window sees a different
sum than the whole song, so independent windows drift (~1% rel L2 on the tiny model).

Here every maximal run of local modules runs window by window with `context` latent frames of real
input on each side of the kept core (more than the receptive field, so the core is exact), and each
EfficientViT block runs in two passes over windows: pass 1 adds up the per-head statistics
sum_j [v_j; 1] k_j^T of the whole input, pass 2 applies them to each window's queries and finishes the
block (projection, norm, residual, GLU conv). Only the stage-3 activations (1024 x 16 per latent frame,
64 KB in fp32) are held whole; the full-resolution stages never exceed one window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_dc import DCDownBlock2d, DCUpBlock2d, EfficientViTBlock
from torch import nn

STREAM_CONTEXT = 8  # latent frames each side; one pass is matched from 6 (encoder) and 4 (decoder) on
# the tiny model, which has the official layer structure (tests/models/v1/test_dcae.py)


def plan_windows(total: int, window: int | None, context: int) -> list[tuple[int, int, int, int]]:
    """Cover [0, total) with windows of `window` units, keeping each one's centre.

    Cores of `window − 2·context` units tile [0, total); each is computed from the `window`-long
    span around it (shifted inwards at the ends, so every core has >= `context` units of real
    input on each side unless it touches an end). `window` None or >= total: one window.

    Returns:
        list of (read_start, read_end, core_start, core_end), in input units.
    """
    if window is None or total <= window:
        return [(0, total, 0, total)]
    core = window - 2 * context
    if core <= 0:
        raise ValueError(f"window {window} must exceed twice the context {context}")
    spans = []
    for c0 in range(0, total, core):
        c1 = min(total, c0 + core)
        s = min(max(0, c0 - context), total - window)
        spans.append((s, s + window, c0, c1))
    return spans


def _scale_change(module: nn.Module) -> float:
    """How a module changes the time resolution (output frames per input frame)."""
    if isinstance(module, DCDownBlock2d):
        return 0.5
    if isinstance(module, DCUpBlock2d):
        return 2.0
    return 1.0


def _run_local(fns: list[Callable], scales: list[float], x: torch.Tensor, scale: int, frames: int,
               window: int, context: int) -> tuple[torch.Tensor, int]:
    """Apply local modules `fns` to x (time axis = `scale` · frames) window by window; returns (y, y's scale)."""
    out_scale = scale
    for s in scales:
        out_scale = int(out_scale * s)
    pieces = []
    for s, e, c0, c1 in plan_windows(frames, window, context):
        h = x[..., s * scale:e * scale]
        for fn in fns:
            h = fn(h)
        pieces.append(h[..., (c0 - s) * out_scale:(c1 - s) * out_scale])
    return torch.cat(pieces, dim=-1), out_scale


def _qkv_heads(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Block input (B, C, H, W) -> multi-scale q/k/v grouped per head, (B, G, 3·d, H, W) in float32.

    The same channel grouping as the module's own forward: [q, k, v] projections concatenated with
    their multi-scale convolutions, then cut into groups of 3·d channels.
    """
    t = x.movedim(1, -1)
    qkv = torch.cat([attn.to_q(t), attn.to_k(t), attn.to_v(t)], dim=-1).movedim(-1, 1)
    qkv = torch.cat([qkv] + [proj(qkv) for proj in attn.to_qkv_multiscale], dim=1).float()
    b, _, h, w = qkv.shape
    return qkv.reshape(b, -1, 3 * attn.attention_head_dim, h, w)


def _split_qkv(heads: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, G, 3d, H, W) -> q, k, v, each (B, G, d, H·W); q and k through ReLU (the linear-attention kernel)."""
    flat = heads.flatten(3)
    return torch.relu(flat[:, :, :d]), torch.relu(flat[:, :, d:2 * d]), flat[:, :, 2 * d:]


def _attention_stats(attn: nn.Module, x: torch.Tensor, frames: int, scale: int, window: int,
                     context: int) -> torch.Tensor:
    """Pass 1: sum over every position of [v; 1] k^T per head, (B, G, d + 1, d) float32."""
    d = attn.attention_head_dim
    total = None
    for s, e, c0, c1 in plan_windows(frames, window, context):
        heads = _qkv_heads(attn, x[..., s * scale:e * scale])[..., (c0 - s) * scale:(c1 - s) * scale]
        _, k, v = _split_qkv(heads, d)
        v1 = F.pad(v, (0, 0, 0, 1), value=1.0)  # the extra row of ones sums k: the normaliser
        part = v1 @ k.transpose(-1, -2)
        total = part if total is None else total + part
    return total


def _attention_block(block: EfficientViTBlock, stats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pass 2 on one window: the whole EfficientViT block with the song-wide attention statistics."""
    attn = block.attn
    d = attn.attention_head_dim
    heads = _qkv_heads(attn, x)
    b, _, _, h, w = heads.shape
    q, _, _ = _split_qkv(heads, d)
    out = stats @ q  # (B, G, d + 1, H·W)
    out = (out[:, :, :-1] / (out[:, :, -1:] + attn.eps)).to(x.dtype)
    out = attn.to_out(out.reshape(b, -1, h, w).movedim(1, -1)).movedim(-1, 1)
    if attn.norm_type == "rms_norm":
        out = attn.norm_out(out.movedim(1, -1)).movedim(-1, 1)
    else:
        out = attn.norm_out(out)
    if attn.residual_connection:
        out = out + x
    return block.conv_out(out)


def _run_attention(block: EfficientViTBlock, x: torch.Tensor, scale: int, frames: int, window: int,
                   context: int) -> torch.Tensor:
    stats = _attention_stats(block.attn, x, frames, scale, window, context)
    y, _ = _run_local([lambda h: _attention_block(block, stats, h)], [1.0], x, scale, frames, window, context)
    return y


def run_stream(steps: list[nn.Module | Callable], x: torch.Tensor, scale: int, frames: int,
               window: int, context: int = STREAM_CONTEXT) -> torch.Tensor:
    """Run `steps` (modules or local callables) over x, whose time axis is `scale` · `frames` long."""
    local: list = []
    changes: list[float] = []
    for step in list(steps) + [None]:
        if step is not None and not isinstance(step, EfficientViTBlock):
            local.append(step)
            changes.append(_scale_change(step) if isinstance(step, nn.Module) else 1.0)
            continue
        if local:
            x, scale = _run_local(local, changes, x, scale, frames, window, context)
            local, changes = [], []
        if step is not None:
            x = _run_attention(step, x, scale, frames, window, context)
    return x


def _encoder_steps(encoder: nn.Module) -> list:
    def tail(h: torch.Tensor) -> torch.Tensor:
        y = encoder.conv_out(h)
        if encoder.out_shortcut:  # average groups of channels down to the latent channels
            y = y + h.unflatten(1, (-1, encoder.out_shortcut_average_group_size)).mean(dim=2)
        return y

    return [encoder.conv_in] + [m for stage in encoder.down_blocks for m in stage] + [tail]


def _decoder_steps(decoder: nn.Module) -> list:
    def head(z: torch.Tensor) -> torch.Tensor:
        y = decoder.conv_in(z)
        if decoder.in_shortcut:  # repeat each latent channel up to the stage-3 width
            y = y + z.repeat_interleave(decoder.in_shortcut_repeats, dim=1)
        return y

    def tail(h: torch.Tensor) -> torch.Tensor:
        h = decoder.norm_out(h.movedim(1, -1)).movedim(-1, 1)
        return decoder.conv_out(decoder.conv_act(h))

    return [head] + [m for stage in reversed(decoder.up_blocks) for m in stage] + [tail]


def encode_stream(encoder: nn.Module, mel: torch.Tensor, window: int, time_multiple: int,
                  context: int = STREAM_CONTEXT) -> torch.Tensor:
    """(B, 2, 128, time_multiple · L) normalised mel -> (B, 8, 16, L), as `encoder(mel)` does."""
    frames = mel.shape[-1] // time_multiple
    if frames <= window:
        return encoder(mel)
    return run_stream(_encoder_steps(encoder), mel, time_multiple, frames, window, context)


def decode_stream(decoder: nn.Module, z: torch.Tensor, window: int, context: int = STREAM_CONTEXT) -> torch.Tensor:
    """(B, 8, 16, L) raw latents -> (B, 2, 128, 8 · L) normalised mel, as `decoder(z)` does."""
    if z.shape[-1] <= window:
        return decoder(z)
    return run_stream(_decoder_steps(decoder), z, 1, z.shape[-1], window, context)
