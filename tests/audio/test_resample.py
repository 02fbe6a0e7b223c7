"""acetune.audio.resample reproduces torchaudio's Resample (golden kernels/outputs at 1e-5, here bit-exact)."""

from __future__ import annotations

import math

import pytest
import torch

from acetune.audio.resample import resample, resample_kernel
from acetune.parity.audio import get_audio_case
from golden_checks import assert_rows_pass


def test_golden_get_audio_case_passes(golden):
    rows = assert_rows_pass(get_audio_case(golden))  # the function `acetune selftest --only get_audio` runs
    assert {r.tensor for r in rows} >= {"resample_kernel_48000_to_44100", "resample_kernel_44100_to_48000",
                                         "resampled_44k", "short_0p10s_is_silent.rejected"}


def test_kernel_shapes_match_torchaudio():
    k, width, g = resample_kernel(48000, 44100)
    assert (tuple(k.shape), width, g) == ((147, 1, 174), 7, 300)
    k, width, g = resample_kernel(44100, 48000)
    assert (tuple(k.shape), width, g) == ((160, 1, 161), 7, 300)


@pytest.mark.parametrize("orig,new", [(8000, 48000), (22050, 48000), (44100, 48000), (96000, 48000), (48000, 44100)])
@pytest.mark.parametrize("length", [1, 999, 4410])
def test_output_length_is_ceil(orig, new, length):
    y = resample(torch.randn(3, 2, length), orig, new)
    assert y.shape == (3, 2, math.ceil(length * new / orig))
    assert y.dtype == torch.float32


def test_equal_rates_return_input_and_dtype_is_kept():
    x = torch.randn(2, 100)
    assert resample(x, 48000, 48000) is x
    assert resample(x.double(), 44100, 48000).dtype == torch.float64


def test_sine_passes_with_unit_gain():
    sr, f = 44100, 440.0
    t = torch.arange(sr) / sr
    y = resample(torch.sin(2 * math.pi * f * t), sr, 48000)
    ref = torch.sin(2 * math.pi * f * torch.arange(y.shape[-1]) / 48000)
    inner = slice(1000, -1000)  # away from the zero-padded edges
    assert (y[inner] - ref[inner]).abs().max() < 2e-3


def test_golden_kernels_and_output_are_bit_exact(golden):
    """The docstring's claim: the phase table equals torchaudio's kernel to the last float32 bit."""
    from safetensors.torch import load_file

    stored = load_file(str(golden / "codec" / "codec.safetensors"))
    for orig, new in ((48000, 44100), (44100, 48000)):
        assert torch.equal(resample_kernel(orig, new)[0], stored[f"resample_kernel_{orig}_to_{new}"])
    assert torch.equal(resample(stored["waveform_48k"], 48000, 44100), stored["resampled_44k"])


@pytest.mark.parametrize("orig,new", [(48000, 44100), (44100, 48000), (8000, 48000), (96000, 48000)])
def test_every_phase_has_unit_dc_gain_and_zero_crossings(orig, new):
    table, reach, g = resample_kernel(orig, new, torch.float64)
    o, n = orig // g, new // g
    # Σ_k h ≈ 1 for every phase (a windowed sinc sums to ~1 when B/o normalises it); not exact: the window
    # and the 0.99 band edge leak a little, far below anything audible.
    assert torch.allclose(table.sum(-1), torch.ones(n, 1, dtype=torch.float64), atol=2e-3)
    # Phase 0 sits on input samples: its tap for the same sample is the peak, B/o.
    assert table[0, 0, reach].item() == pytest.approx(0.99 * min(o, n) / o)


def test_output_length_rounds_the_ratio_to_float32_like_torchaudio():
    from acetune.audio.resample import output_length

    first = next(n for n in range(1, 200_000) if output_length(n, 160, 147) != math.ceil(n * 147 / 160))
    assert first == 142_683 and output_length(first, 160, 147) == math.ceil(first * 147 / 160) - 1
