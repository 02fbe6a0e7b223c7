"""ACE-Step v1 transformer blocks: the adaLN-single `LinearTransformerBlock` and its GLUMBConv feed-forward.

Parameter names equal the official checkpoint's (see `transformer.py`). A block runs as three residual
parts and the feed-forward's second half; `checkpoint_inside` recomputes the parts on their own in the
backward (`--gradient_checkpointing fine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from acetune.models.layers import modulate, rms_norm
from acetune.models.v1.attention import CrossAttention, LinearSelfAttention


class ConvLayer(nn.Module):
    """A Conv1d held as `.conv` (the reference `ConvLayer` wrapper; kept for the key names)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GLUMBConv(nn.Module):
    """Conv1d(W→2H)+SiLU → depthwise Conv1d(k 3) → x·SiLU(gate) → Conv1d(H→W, no bias) (reference `GLUMBConv`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inverted_conv = ConvLayer(dim, hidden * 2, 1)
        self.depth_conv = ConvLayer(hidden * 2, hidden * 2, 3, groups=hidden * 2)
        self.point_conv = ConvLayer(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, W) -> (B, S, W); the convolutions run over the frame axis."""
        return self.contract(self.expand(x))

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The first half: x (B, S, W) -> the depthwise conv's output (B, 2H, S)."""
        return self.depth_conv(F.silu(self.inverted_conv(x.transpose(1, 2))))

    def contract(self, d: torch.Tensor) -> torch.Tensor:
        """The second half: (B, 2H, S) -> the gated product through the pointwise conv, (B, S, W)."""
        h, gate = d.chunk(2, dim=1)
        return self.point_conv(h * F.silu(gate)).transpose(1, 2)


class LinearTransformerBlock(nn.Module):
    """adaLN-single block: linear self-attention, ungated cross-attention, GLUMBConv (reference `LinearTransformerBlock`)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.attn = LinearSelfAttention(dim, heads, head_dim)
        self.cross_attn = CrossAttention(dim, heads, head_dim)
        self.ff = GLUMBConv(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        # `--gradient_checkpointing fine`: inside a checkpointed block's recompute, the self-attention, the
        # cross-attention and the feed-forward's first half are checkpointed again, so the block's backward
        # holds one part's saved tensors at a time (same ops, same numbers; one more forward of those parts)
        self.checkpoint_inside = False

    def forward(self, x, mask, context, allowed, temb, rope, rope_context):
        """x (B, S, W), mask (B, S) or None (every frame real), context (B, L, W), allowed (B, 1, S, L) from
        `cross_attention_mask`, temb (B, 6W) -> (B, S, W)."""
        b = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + temb.reshape(b, 6, -1)
        ).chunk(6, dim=1)  # each (B, 1, W)
        part = _checkpoint_part if self.checkpoint_inside and torch.is_grad_enabled() else _run_part
        x = part(self.self_attention_part, x, mask, rope, shift_msa, scale_msa, gate_msa)
        x = part(self.cross_attention_part, x, context, allowed, rope, rope_context)
        expanded = part(self.feed_forward_in, x, shift_mlp, scale_mlp)
        return x + gate_mlp * self.ff.contract(expanded)  # the last part: its backward comes first, no recompute

    def self_attention_part(self, x, mask, rope, shift, scale, gate):
        return x + gate * self.attn(modulate(rms_norm(x), shift, scale), mask, rope)

    def cross_attention_part(self, x, context, allowed, rope, rope_context):
        # cross-attention reads the un-normalised residual stream and has no gate
        return x + self.cross_attn(x, context, allowed, rope, rope_context)

    def feed_forward_in(self, x, shift, scale):
        return self.ff.expand(modulate(rms_norm(x), shift, scale))


def _run_part(fn, *args):
    return fn(*args)


def _checkpoint_part(fn, *args):
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
