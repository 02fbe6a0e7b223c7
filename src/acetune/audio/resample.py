"""Band-limited resampling with the filter the ACE-Step v1 reference uses (torchaudio `Resample` defaults).

The reference resamples every clip with torchaudio's default filter, and the DCAE latents depend on
it, so we rebuild that filter here (torchaudio itself is not a dependency). The facts taken over
are the filter and the output length: a Hann-windowed sinc, 6 zero crossings each side, cut-off
0.99 × the lower Nyquist, evaluated on the gcd-reduced rates, output length ceil(T · new / orig)
with the ratio rounded to float32 first.

Derivation. Divide both rates by their gcd g: in one time unit u = 1/g s the input has o samples
and the output n. Output sample j = b·n + p (block b, phase p) sits at time b + p/n; input sample
i = b·o + m sits at time b + m/o. Their distance d = m/o − p/n does not depend on the block, so all
outputs of phase p use the same weights. The ideal low-pass of bandwidth B (twice its cut-off
frequency, in samples per u) weights input sample i by

    h(d) = (B / o) · sinc(B·d),   sinc(x) = sin(πx) / (πx),

where x = B·d counts the sinc's zero crossings and B/o gives unit gain at DC. We take
B = 0.99·min(o, n) (just below the lower Nyquist), keep |x| ≤ Z = 6 and taper with the Hann window
cos²(πx / 2Z) = (1 + cos(πx/Z)) / 2, which is 0 at |x| = Z. |x| ≤ Z reaches W = ceil(Z·o / B)
input samples on each side, so block b needs input samples b·o − W … b·o + o + W − 1: K = 2W + o
taps, sliding by o samples per block.

The phase table T[p, k] = h(x) at d = (k − W)/o − p/n (k = 0 … K−1) turns the resampler into one
strided correlation: view the clip (zeros outside it: W in front, up to W + o behind) as blocks of K
samples at stride o, multiply by Tᵀ (output (blocks, n): block by block, phase fastest — the
output order, so no transpose), and keep the first ceil(T·n/o) samples. This is the matrix product
a strided conv1d lowers to, so the sums are the same (bit-equal on the golden clip), but it skips
conv1d's per-call overhead and layout transposes and runs in cache-sized chunks: about 2x faster.
Each phase is non-zero on only ~2Z·o/B + 1 of the K taps (at most 14 of 174 for 48 → 44.1 kHz), so the
product is banded (`audio/banded.py`): groups of phases multiply only their taps' rows, a quarter
of the dense multiply-adds, same sums (bit-equal on the golden clip). The table is built in float64
and rounded to the signal dtype once; the per-phase shift p/n is rounded to float32 before use,
which is how torchaudio forms it, so the table matches its kernel to the last float32 bit on the
golden rates.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from acetune.audio.banded import BandedMatrix

# Blocks of o input samples correlated per matmul: the unfolded (B, blocks, K) copy stays a few MB
# (cache-sized) instead of the whole song's K/o-fold expansion.
_BLOCKS_PER_CHUNK = 4096
ZERO_CROSSINGS = 6  # Z: sinc lobes kept on each side of the centre
BANDWIDTH_FRACTION = 0.99  # B / min(o, n): the pass band ends just below the lower Nyquist


def _hann_sinc(x: torch.Tensor, bandwidth: float, orig: int) -> torch.Tensor:
    """h = (B/o) · sinc(x) · cos²(πx / 2Z), zero outside |x| ≤ Z (x = B·d, in sinc zero crossings)."""
    x = x.clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)  # at |x| = Z the window is 0, so clamping zeroes the tail
    taper = torch.cos(x * math.pi / ZERO_CROSSINGS / 2) ** 2
    return torch.sinc(x) * taper * (bandwidth / orig)


@lru_cache(maxsize=32)
def _phase_table(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Rows T[p] for gcd-reduced rates (orig, new): (new, 1, 2W + orig) in `dtype`, and W."""
    bandwidth = BANDWIDTH_FRACTION * min(orig, new)
    reach = math.ceil(ZERO_CROSSINGS * orig / bandwidth)  # W: input samples needed on each side
    tap_time = torch.arange(-reach, reach + orig, dtype=torch.float64) / orig  # (K,) (k − W)/o
    phase_shift = (torch.arange(new, dtype=torch.float32) / new).to(torch.float64)  # (n,) p/n, float32-rounded
    distance = tap_time[None, :] - phase_shift[:, None]  # (n, K) d in time units u
    table = _hann_sinc(distance * bandwidth, bandwidth, orig)
    return table.to(dtype)[:, None, :], reach


def resample_kernel(orig_sr: int, new_sr: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, int, int]:
    """The phase table for `orig_sr` → `new_sr` (equal to torchaudio's `Resample` kernel).

    Returns:
        (table (n, 1, 2W + o), W, gcd) where o, n are the rates divided by their gcd.
        e.g. 48000→44100: gcd 300, table (147, 1, 174), W 7.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(orig_sr, new_sr)
    table, reach = _phase_table(orig_sr // g, new_sr // g, dtype)
    return (table if device is None else table.to(device)), reach, g


@lru_cache(maxsize=32)
def _banded_taps(orig_sr: int, new_sr: int, dtype: torch.dtype, device: torch.device) -> BandedMatrix:
    """The phase table as a (K, n) banded matrix: tap k of block -> phase p."""
    table, _, _ = resample_kernel(orig_sr, new_sr, dtype, device)
    return BandedMatrix(table[:, 0, :].T)


def output_length(length: int, orig: int, new: int) -> int:
    """ceil(length · new / orig) with the ratio rounded to float32 first, as torchaudio computes it.

    When the exact ratio lies just above an integer (closer than float32's rounding step, x·2⁻²⁴),
    the rounding lands on the integer and the result is one sample shorter than the exact ceiling;
    e.g. 48 → 44.1 kHz first at 142,683 input samples (2.97 s). Kept so lengths match the reference.
    """
    return math.ceil(float(torch.tensor(new * length / orig, dtype=torch.float32)))


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last axis with the reference's filter and output length.

    Args:
        wav: (..., T) floating tensor (any leading shape, any device).
        orig_sr, new_sr: sample rates in Hz (integers).
    Returns:
        (..., ceil(T · new_sr / orig_sr)) tensor of the same dtype and device; `wav` itself when the
        rates are equal.
    """
    if int(orig_sr) == int(new_sr):
        return wav
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a floating tensor, got {wav.dtype}")
    _, reach, g = resample_kernel(orig_sr, new_sr)
    taps = _banded_taps(int(orig_sr), int(new_sr), wav.dtype, wav.device)
    orig, new = int(orig_sr) // g, int(new_sr) // g
    *lead, length = wav.shape
    rows = wav.reshape(-1, length)
    width, total = taps.shape[0], output_length(length, orig, new)  # K taps, output samples
    out = torch.empty(rows.shape[0], total, dtype=wav.dtype, device=wav.device)
    blocks = -(-total // new)
    for b0 in range(0, blocks, _BLOCKS_PER_CHUNK):
        b1 = min(blocks, b0 + _BLOCKS_PER_CHUNK)
        start, stop = b0 * orig - reach, (b1 - 1) * orig + width - reach  # the chunk's input samples
        first, last = b0 * new, min(b1 * new, total)  # and its output samples
        for row in range(rows.shape[0]):
            piece = rows[row, max(start, 0):min(stop, length)]
            if start < 0 or stop > length:  # zeros outside the clip; only the first and last chunks
                piece = F.pad(piece, (max(-start, 0), max(stop - length, 0)))
            frames = piece.unfold(-1, width, orig)  # (b, K), 2-D strided: to BLAS without a copy
            if last - first == (b1 - b0) * new:  # (b, n): block by block, phase fastest = output order
                taps.matmul(frames, out=out[row, first:last].view(b1 - b0, new))
            else:  # the last block runs past the output length
                out[row, first:last] = taps.matmul(frames).flatten()[:last - first]
    return out.reshape(*lead, total)
