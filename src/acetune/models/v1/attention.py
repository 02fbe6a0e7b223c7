"""ACE-Step v1 attention: the reference's RoPE, linear self-attention and SDPA cross-attention.

Both attentions keep the reference's parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`) so the
official checkpoint loads 1:1 and LoRA target names mean what they mean upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------


def rope_tables(length: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (length, head_dim) in fp32, as the reference's `Qwen2RotaryEmbedding` builds them.

    inv_freq[i] = 1 / theta^(2i/D) for i < D/2; freqs = pos ⊗ inv_freq; each table repeats its
    half: cos([freqs, freqs]). Computed for `length` positions only (element-wise identical to the
    reference's 32768-row cache), and never stored, so meta-device construction has nothing to fill.

    The sin table comes back with the sign of its even columns flipped (see `apply_rope`).
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    pos = torch.arange(length, dtype=torch.int64, device=device).float()
    freqs = torch.outer(pos, inv_freq)
    table = torch.cat((freqs, freqs), dim=-1)
    sign = torch.tensor([-1.0, 1.0], device=device).repeat(head_dim // 2)
    return table.cos(), table.sin() * sign


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (B, H, S, D) with the `rope_tables` (S, D); result in x's dtype.

    Mirrors the reference processors' `apply_rotary_emb`: out[2i] = x[2i]·cos[2i] − x[2i+1]·sin[2i],
    out[2i+1] = x[2i+1]·cos[2i+1] + x[2i]·sin[2i+1], in fp32. The pair members read table columns 2i
    and 2i+1 of the duplicated-half tables, so this is neither standard rotate-half nor standard
    interleaved RoPE; it must be reproduced as is for the released weights.

    The minus sign lives in the table (negation is exact, so the result is bit-identical to negating
    x), and bf16 x meets the fp32 tables through type promotion instead of explicit fp32 copies:
    4 elementwise kernels instead of 8, fewer saved tensors for the backward.
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i]) pairs
    return (x * cos + swapped * signed_sin).to(x.dtype)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs matmuls in for x's device, or None when autocast is off there."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


# ---------------------------------------------------------------------------------------------
# Linear self-attention
# ---------------------------------------------------------------------------------------------


class LinearSelfAttention(nn.Module):
    """ReLU-kernel linear attention over latent frames (reference: `CustomLiteLAProcessor2_0`).

    out_s = Σ_t v_t (k_t·q_s) / (Σ_t k_t·q_s + 1e-15), no 1/sqrt(D), accumulated in fp32 whatever
    the input dtype. Cost is linear in the number of frames.
    """

    eps = 1e-15
    lean_casts = True  # skip the fp32 round trip under autocast (`benchmarks/train_levers.py` switches it off)

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor]):
        """x (B, S, C), mask (B, S) 1 = frame present, rope tables (S, D) -> (B, S, C)."""
        b, s, _ = x.shape
        dtype = x.dtype
        # channel c = h·D + d (channel-major heads)
        q = self.to_q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = self.to_k(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
        if mask is not None:
            m = mask[:, None, :, None].to(k.dtype)  # (B, 1, S, 1)
            q, k, v = q * m, k * m, v * m
        q, k = F.relu(q), F.relu(k)
        if autocast_dtype(q) == q.dtype and self.lean_casts:
            # The reference casts q, k, v to fp32 and autocast casts them straight back for each matmul: a
            # lossless round trip (7 activation copies per block and pass). Same kernels, same bits without it.
            ksum = k.sum(dim=2, keepdim=True, dtype=torch.float32)  # fp32 accumulation, as k.float().sum()
        else:
            q, k, v = q.float(), k.float(), v.float()
            ksum = k.sum(dim=2, keepdim=True)
        kv = torch.matmul(k.transpose(-1, -2), v)  # (B, H, D_k, D_v) = Σ_t k_t v_tᵀ
        num = torch.matmul(q, kv)  # (B, H, S, D_v)
        den = torch.matmul(q, ksum.transpose(-1, -2))  # (B, H, S, 1)
        out = num / (den + self.eps)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim).to(dtype)
        return self.to_out[1](self.to_out[0](out))


# ---------------------------------------------------------------------------------------------
# Cross-attention
# ---------------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Latents attend to the encoder states with SDPA (reference: `CustomerAttnProcessor2_0`).

    `add_q_proj`, `add_k_proj`, `add_v_proj` and `to_add_out` exist only because the reference
    builds a diffusers `Attention` with `added_kv_proj_dim`; the forward never uses them. They stay
    in the state dict so the official checkpoint loads; `drop_unused()` frees them for training.
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.add_k_proj = nn.Linear(dim, inner)
        self.add_v_proj = nn.Linear(dim, inner)
        self.add_q_proj = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(inner, dim)

    UNUSED = ("add_k_proj", "add_v_proj", "add_q_proj", "to_add_out")

    def drop_unused(self) -> None:
        """Delete the never-used projections (their keys disappear from the state dict)."""
        for name in self.UNUSED:
            if hasattr(self, name):
                delattr(self, name)

    def forward(self, x, context, allowed, rope_q, rope_k):
        """x (B, S, C) latents; context (B, L, C); allowed (B, 1, S, L) from `cross_attention_mask` -> (B, S, C).

        A latent row with every key masked (a padded frame) comes out as 0, as torch >= 2.5 SDPA returns
        for fully masked rows. (A boolean mask gives bit for bit what the reference's additive 0/-inf
        mask gives, forward and backward.)
        """
        b, s, _ = x.shape
        q = self.to_q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = self.to_k(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        v = self.to_v(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, *rope_q)
        k = apply_rope(k, *rope_k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, S, D)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim).to(q.dtype)
        return self.to_out[1](self.to_out[0](out))


def cross_attention_mask(mask: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """Latent mask (B, S) and context mask (B, L), 1 = present -> (B, 1, S, L) bool, True where both are.

    Built once per forward and shared by every block (the reference rebuilds it in each block).
    """
    return ((mask[:, :, None] * context_mask[:, None, :]) == 1)[:, None]
