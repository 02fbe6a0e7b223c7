"""bf16 linear layers with their weights packed once for the CPU's oneDNN kernels (`--pack_weights`).

A bf16 `nn.Linear` on the CPU runs oneDNN's matmul, which first reorders the weight into its blocked
layout, on every call (a 5 s MERT chunk is only 375 rows: one MERT-size layer runs 9% faster packed,
a whole official-size run ~1%, so it is opt-in). `pack_linears` does the reorder once:
each bf16 `nn.Linear` becomes a `PackedLinear` holding the blocked weight and calling the same oneDNN
kernel (`torch.ops.mkldnn._linear_pointwise`, what inductor's weight freezing uses), so the outputs
are bit-identical (tests/preprocessing/test_packed.py); the plain weight is dropped (a MERT-size
model's peak and resident RSS were unchanged). Only bf16 on a CPU with oneDNN bf16 support:
fp32 linears run MKL's sgemm instead, which oneDNN would not reproduce bit for bit, and a GPU has no
such reorder.
"""

from __future__ import annotations

import torch
from torch import nn

from acetune.preprocessing.batching import heavy_encoders


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """True where `pack_linears` gives bit-identical outputs: bf16 on a CPU whose oneDNN does bf16."""
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:  # private ops (inductor's): a torch without them just runs unpacked
        torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise  # noqa: B018
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """Inference-only `nn.Linear` whose weight is held in oneDNN's blocked layout (see the module doc)."""

    def __init__(self, linear: nn.Linear, rows_hint: int = 512):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # `weight` stays readable (dtype, shape) for code that inspects it, e.g. T5's dtype check
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint),
                             persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Replace every bf16 CPU `nn.Linear` in `model` by a `PackedLinear`, in place; returns how many.

    For inference only (no gradients through the packed weights). Call only where `can_pack` holds.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight.device.type == "cpu":
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count


def pack_encoders(enc) -> dict[str, int]:
    """`pack_linears` on the encoders preprocess runs (`batching.heavy_encoders`); returns {name: linears
    packed} for the modules that had any."""
    counts = {name: pack_linears(module) for name, module in heavy_encoders(enc).items()}
    return {name: count for name, count in counts.items() if count}
