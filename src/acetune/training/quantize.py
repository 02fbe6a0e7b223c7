"""int8 base weights for training (`--int8`): the shared quanto step, and the v1 transformer's use of it."""

from __future__ import annotations

import torch

from acetune.errors import UsageError


def quantize_linears_int8(container: torch.nn.Module) -> int:
    """int8 weights (optimum-quanto) for every Linear inside `container`; returns how many.

    Apply before the LoRA is added: peft then wraps the quantized layers and trains fp32 A/B over them.
    """
    try:
        from optimum.quanto import freeze, qint8, quantize
    except ImportError as err:
        raise UsageError("--int8 needs optimum-quanto", fix="pip install optimum-quanto") from err
    quantize(container, weights=qint8)
    freeze(container)
    qlinears = [m for m in container.modules() if type(m).__name__ == "QLinear"]
    for m in qlinears:  # quanto's CPU int8 matmul needs a contiguous last dimension
        m.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    return len(qlinears)


class PointwiseConv(torch.nn.Module):
    """A kernel-1 Conv1d as a Linear over channels, so quanto (which has no Conv1d) can quantize it.

    x (B, C_in, S) -> (B, C_out, S); same arithmetic as the convolution it replaces.
    """

    def __init__(self, conv: torch.nn.Conv1d):
        super().__init__()
        self.linear = torch.nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                                      device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight[:, :, 0])
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)
        self.linear.requires_grad_(conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.transpose(1, 2)).transpose(1, 2)


def as_linear_pointwise_convs(model: torch.nn.Module) -> int:
    """Swap every ungrouped kernel-1 Conv1d inside the blocks (GLUMBConv's inverted/point convs: a third
    of the official model) for `PointwiseConv`; returns the count. Module paths are unchanged."""
    return _pointwise_as_linear(model.transformer_blocks)


def _pointwise_as_linear(container: torch.nn.Module) -> int:
    count = 0
    for module in list(container.modules()):
        conv = getattr(module, "conv", None)
        if isinstance(conv, torch.nn.Conv1d) and conv.kernel_size == (1,) and conv.groups == 1:
            module.conv = PointwiseConv(conv)
            count += 1
    return count


def quantize_int8(model: torch.nn.Module) -> int:
    """int8 weights for every Linear and pointwise conv of the transformer blocks (optimum-quanto); returns
    the number of quantized layers. Apply before the LoRA is added."""
    as_linear_pointwise_convs(model)  # quanto has no Conv1d: make GLUMBConv's pointwise convs Linears first
    return quantize_linears_int8(model.transformer_blocks)


def quantize_block_int8(block: torch.nn.Module) -> int:
    """`quantize_int8` for one transformer block (the int8 loader calls it as each block is read, so the
    bf16 weights of only one block are ever resident); returns the number of quantized layers."""
    _pointwise_as_linear(block)
    return quantize_linears_int8(block)
