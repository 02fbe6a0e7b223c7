"""int8 base weights for training (`--int8`), shared by every model family."""

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
