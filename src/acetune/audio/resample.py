"""Band-limited resampling identical to torchaudio's `Resample` with its default settings.

torchaudio is not a dependency (see DEVELOPERS.md), but the reference (ACE-Step v1) resamples every
clip with `torchaudio.transforms.Resample(orig, new)`: Hann-windowed sinc (`sinc_interp_hann`),
`lowpass_filter_width` 6, `rolloff` 0.99. The DCAE latents depend on that exact filter, so this
module rebuilds it in plain torch (mirrors torchaudio `_get_sinc_resample_kernel` and
`_apply_sinc_resample_kernel`; the golden kernels in codec.safetensors check it at 1e-5).

Method: reduce both rates by their gcd to (o, n). Output sample j of every block of n outputs is a
dot product of a (2·width + o)-tap window of the input (polyphase filter bank of n kernels), run as
one strided `conv1d` with stride o. Output length is ceil(L · n / o).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=32)
def _kernel_cpu(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase kernel (new, 1, 2·width + orig) for gcd-reduced rates, and `width`.

    Mirrors torchaudio `_get_sinc_resample_kernel(..., dtype=None)` as `Resample` calls it: the
    arithmetic runs in float64 (the per-phase offsets k/new are first rounded to float32, as there)
    and the kernel is then cast to `dtype`.
    """
    base_freq = min(orig, new) * ROLLOFF  # cut-off just below the lower Nyquist
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)  # taps on each side, in input samples
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    # torchaudio builds the phase offsets with an integer arange divided in the default float32.
    phase = torch.arange(0, -new, -1).to(torch.float32)[:, None, None] / new  # (new, 1, 1)
    t = (phase.to(torch.float64) + idx) * base_freq  # (new, 1, K), in units of the cut-off period
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2  # Hann over [-width, width]
    t = t * math.pi
    scale = base_freq / orig  # unity gain at DC
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * scale
    return kernel.to(dtype), width


def resample_kernel(orig_sr: int, new_sr: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, int, int]:
    """The torchaudio `Resample(orig_sr, new_sr)` kernel.

    Returns:
        (kernel (n, 1, 2·width + o), width, gcd) where o, n are the rates divided by their gcd.
        e.g. 48000→44100: gcd 300, kernel (147, 1, 174), width 7.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(orig_sr, new_sr)
    kernel, width = _kernel_cpu(orig_sr // g, new_sr // g, dtype)
    if device is not None:
        kernel = kernel.to(device)
    return kernel, width, g


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last axis exactly like `torchaudio.transforms.Resample(orig_sr, new_sr)`.

    Args:
        wav: (..., T) floating tensor (any leading shape, any device).
        orig_sr, new_sr: sample rates in Hz (integers).
    Returns:
        (..., ceil(T · new_sr / orig_sr)) tensor of the same dtype and device; `wav` itself when the
        rates are equal (torchaudio returns the input unchanged too).
    """
    if int(orig_sr) == int(new_sr):
        return wav
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a floating tensor, got {wav.dtype}")
    kernel, width, g = resample_kernel(orig_sr, new_sr, wav.dtype, wav.device)
    orig, new = int(orig_sr) // g, int(new_sr) // g
    shape = wav.shape
    x = wav.reshape(-1, shape[-1])  # (B, T)
    length = x.shape[-1]
    x = F.pad(x, (width, width + orig))  # zeros outside the clip, as torchaudio does
    y = F.conv1d(x[:, None], kernel, stride=orig)  # (B, new, blocks): phase-major
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave phases -> (B, blocks·new)
    # torchaudio: ceil(torch.as_tensor(new * length / orig)), i.e. the ratio rounded to float32
    # first; for outputs beyond 2**23 samples that can differ from the exact ceiling.
    target = int(torch.ceil(torch.as_tensor(new * length / orig, dtype=torch.float32)).item())
    return y[:, :target].reshape(*shape[:-1], -1)
