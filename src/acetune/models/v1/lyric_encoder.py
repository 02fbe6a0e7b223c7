"""The ACE-Step v1 lyric encoder: a pre-norm Conformer without convolution modules.

Mirrors the reference `ConformerEncoder` as ACE-Step builds it (`lyrics_utils/lyric_encoder.py`,
an ESPnet/WeNet descendant): linear input embedding, ESPnet relative positional encoding,
relative-position multi-head self-attention (Transformer-XL biases u and v), SiLU feed-forward,
full attention with a key-padding mask (static_chunk_size 0). Parameter names follow the reference
(`embed.out.0`, `encoders.<i>.self_attn.linear_q`, ...) so the official weights load 1:1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The reference's dropout rates (ConformerEncoder defaults as ACE-Step constructs it).
DROPOUT = 0.1
POS_DROPOUT = 0.1
ATTN_DROPOUT = 0.0


def relative_position_table(length: int, dim: int, device=None) -> torch.Tensor:
    """ESPnet relative sinusoids (1, 2·length − 1, dim), fp32, rows for distances length−1 … −(length−1).

    Mirrors `EspnetRelPositionalEncoding.extend_pe`: distance r -> [sin(r·w), cos(r·w)] interleaved
    (even channels sin, odd cos), w_i = exp(−2i·ln(10000)/dim). Row k holds distance length−1−k.
    """
    pos = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)
    w = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    ahead = torch.stack((torch.sin(pos * w), torch.cos(pos * w)), dim=-1).flatten(1)  # distance +p
    behind = torch.stack((torch.sin(-1 * pos * w), torch.cos(-1 * pos * w)), dim=-1).flatten(1)  # −p
    return torch.cat((ahead.flip(0), behind[1:]), dim=0).unsqueeze(0)


def shift_relative(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T−1) scores against table rows -> (B, H, T, T) with entry (i, j) at distance i − j.

    Row k of the table is distance T−1−k, so (i, j) reads column T−1−i+j: a strided view with
    offset T−1 and row stride 2T−2 (the same result as ESPnet's pad-and-reshape `rel_shift`).
    """
    b, h, t, width = scores.shape
    scores = scores.contiguous()
    return scores.as_strided((b, h, t, t), (h * t * width, t * width, width - 1, 1), scores.storage_offset() + t - 1)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (reference `RelPositionMultiHeadedAttention`)."""

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.h, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(ATTN_DROPOUT)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); key_mask (B, 1, T) bool, True = real token; pos_emb (1, 2T−1, C) -> (B, T, C)."""
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)  # (B, T, H, d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)  # (B, H, T, d_k)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.shape[0], -1, self.h, self.d_k).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # (B, H, T, T)
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # (B, H, T, 2T−1)
        scores = (content + shift_relative(position)) / math.sqrt(self.d_k)
        padded = ~key_mask.unsqueeze(1)  # (B, 1, 1, T)
        # The reference fills −inf and zeroes the padded weights after softmax; the most negative
        # finite value gives the same forward result (exp underflows to exactly 0) without the NaN
        # that an all-padded row (empty lyrics, mask 0) would send backwards through softmax.
        scores = scores.masked_fill(padded, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(padded, 0.0)
        out = torch.matmul(self.dropout(weights), v)  # (B, H, T, d_k)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k))


class FeedForward(nn.Module):
    """`w_2(Dropout(SiLU(w_1 x)))` (reference `PositionwiseFeedForward` with swish)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(DROPOUT)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerLayer(nn.Module):
    """Pre-norm layer: x += Dropout(MHA(LN(x))); x += Dropout(FF(LN(x))) (reference `ConformerEncoderLayer`)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = FeedForward(dim, hidden)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm_mha(x), key_mask, pos_emb))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class LinearEmbed(nn.Module):
    """Linear → LayerNorm → Dropout, then ×sqrt(dim) and the relative table (reference `LinearEmbed`)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=1e-5), nn.Dropout(DROPOUT))
        self.pos_dropout = nn.Dropout(POS_DROPOUT)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, in_dim) -> scaled embeddings (B, T, dim), pos_emb (1, 2T−1, dim) in x's dtype."""
        x = self.out(x) * math.sqrt(self.dim)
        pos_emb = relative_position_table(x.shape[1], self.dim, x.device).to(x.dtype)
        return self.pos_dropout(x), self.pos_dropout(pos_emb)


class LyricEncoder(nn.Module):
    """Conformer over lyric token embeddings: (B, T, in_dim) + mask (B, T) -> (B, T, dim).

    Args:
        input_size: embedding width (the model's `lyric_hidden_size`).
        output_size, attention_heads, linear_units, num_blocks: official 1024 / 16 / 4096 / 6.
    Set `gradient_checkpointing` (done by `enable_gradient_checkpointing()` on the transformer) to
    recompute each layer in the backward pass while training.
    """

    def __init__(self, input_size: int, output_size: int = 1024, attention_heads: int = 16,
                 linear_units: int = 4096, num_blocks: int = 6):
        super().__init__()
        self.embed = LinearEmbed(input_size, output_size)
        self.encoders = nn.ModuleList(
            [ConformerLayer(output_size, attention_heads, linear_units) for _ in range(num_blocks)]
        )
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)
        self.gradient_checkpointing = False
        self.capture: dict[str, torch.Tensor] | None = None  # set by parity code to record intermediates

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        key_mask = mask.to(torch.bool).unsqueeze(1)  # (B, 1, T): nonzero = real token
        x, pos_emb = self.embed(x)
        self._record("embed.x", x)
        self._record("embed.pos_emb", pos_emb)
        for i, layer in enumerate(self.encoders):
            if self.gradient_checkpointing and torch.is_grad_enabled() and self.training:
                x = self._gradient_checkpointing_func(layer, x, key_mask, pos_emb)
            else:
                x = layer(x, key_mask, pos_emb)
            self._record(f"encoders.{i}", x)
        x = self.after_norm(x)
        self._record("out", x)
        return x

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.capture is not None:
            self.capture[name] = value.detach()
