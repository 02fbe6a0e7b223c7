"""The golden deterministic-weight rule (../shared/golden/README.md, "Deterministic weights").

Every floating-point parameter gets a value that depends only on its state-dict key and shape, so
golden vectors can be checked without a weights file:

    seed = crc32(key) (unsigned 32-bit); r = randn(shape, Generator("cpu").manual_seed(seed)), fp32
    0-d                       -> r * 0.02
    1-d, key ends in "weight" -> r * 0.02 + 1        (norm scales)
    1-d otherwise             -> r * 0.02            (biases, gammas)
    >= 2-d                    -> r * fp32(1 / sqrt(numel / shape[0]))   (fan-in scale)

Buffers are never touched. Verified against `det_init_check.json` in the tests.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import torch

_SMALL = torch.tensor(0.02, dtype=torch.float32)  # the float32 nearest to 0.02


def key_seed(key: str) -> int:
    """The generator seed for a state-dict key: CRC-32 of its UTF-8 bytes (unsigned)."""
    return zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF


def det_value(key: str, shape: Iterable[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The deterministic value of parameter `key` with `shape`, computed in fp32, cast to `dtype`."""
    shape = tuple(int(s) for s in shape)
    gen = torch.Generator(device="cpu").manual_seed(key_seed(key))
    value = torch.randn(shape, generator=gen, dtype=torch.float32)
    # in place: no second full-size temporary (the 3.5B model is built tensor by tensor)
    if len(shape) >= 2:
        fan_in = max(math.prod(shape) // shape[0], 1)
        value.mul_(torch.tensor(1.0 / math.sqrt(fan_in), dtype=torch.float32))
    else:
        value.mul_(_SMALL)
        if len(shape) == 1 and key.endswith("weight"):
            value.add_(1.0)
    return value.to(dtype)


@torch.no_grad()
def det_init_(model: torch.nn.Module, dtype: torch.dtype | None = None, prefix: str = "",
              skip: tuple[str, ...] = ()) -> int:
    """Overwrite every floating-point parameter of `model` in place; returns how many were set.

    Works on models built on the meta device too: such parameters are replaced by real CPU tensors.
    dtype: the parameters' new dtype (default: their own), so a meta model is materialised in bf16
    tensor by tensor, never as a whole fp32 copy. prefix: what `model`'s keys start with inside the
    whole model (to set one block as the whole model would). skip: key prefixes left untouched.
    """
    count = 0
    for name, param in list(model.named_parameters()):
        if not param.is_floating_point() or name.startswith(skip):
            continue
        value = det_value(prefix + name, param.shape, dtype or param.dtype)
        if param.is_meta or value.dtype != param.dtype:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=param.requires_grad))
        else:
            param.copy_(value)
        count += 1
    return count


def det_state_dict(shapes: dict[str, Iterable[int]], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """{key: deterministic tensor} for a {key: shape} listing (parameters only)."""
    return {k: det_value(k, s, dtype) for k, s in shapes.items()}
