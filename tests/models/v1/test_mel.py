"""acetune.models.v1.mel: the vocoder's log-mel in plain torch, checked against the golden codec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from acetune.models.v1.mel import LogMelSpectrogram, hz_to_mel_slaney, mel_to_hz_slaney, slaney_mel_filterbank
from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config
from acetune.parity.registry import rel_l2


def _golden(golden):
    return load_file(golden / "codec" / "codec.safetensors")


def test_filterbank_and_window_match_golden(golden):
    ref = _golden(golden)
    mel = LogMelSpectrogram()
    assert torch.equal(mel.spectrogram.window, ref["stft_window"])
    err = rel_l2(mel.mel_scale.fb, ref["mel_filterbank"])
    assert err <= 1e-5, err  # measured 5.0e-7 (float32 rounding of the mel points)
    assert (mel.mel_scale.fb - ref["mel_filterbank"]).abs().max() < 1e-6


def test_log_mel_of_stored_44k_audio_matches_golden(golden):
    ref = _golden(golden)
    audio = F.pad(ref["resampled_44k"], (0, 122880 - ref["resampled_44k"].shape[-1]))  # DCAE padding rule
    out = LogMelSpectrogram()(audio)
    assert out.shape == ref["log_mel"].shape == (1, 2, 128, 240)
    err = rel_l2(out, ref["log_mel"])
    assert err <= 1e-5, err  # measured 1.8e-7


def test_frames_and_leading_dims():
    mel = LogMelSpectrogram()
    x = torch.randn(3, 2, 512 * 10)
    out = mel(x)
    assert out.shape == (3, 2, 128, 10)
    assert torch.allclose(out[1, 0], mel(x[1, 0]), atol=1e-5)
    assert out.min() >= torch.log(torch.tensor(1e-5)) - 1e-6  # clamp floor


def test_slaney_scale_round_trip_and_knee():
    assert abs(hz_to_mel_slaney(1000.0) - 15.0) < 1e-12  # linear part ends at 1 kHz = 15 mel
    hz = torch.tensor([40.0, 500.0, 1000.0, 4000.0, 16000.0])
    back = mel_to_hz_slaney(torch.tensor([hz_to_mel_slaney(float(f)) for f in hz]))
    assert torch.allclose(back, hz, rtol=1e-5)
    fb = slaney_mel_filterbank(1025, 40.0, 16000.0, 128, 44100)
    assert fb.shape == (1025, 128) and (fb >= 0).all()
    assert (fb.sum(0) > 0).all()  # every filter covers at least one bin


def test_buffers_carry_vocoder_state_dict_names():
    keys = ADaMoSHiFiGANV1(**tiny_vocoder_config()).state_dict().keys()
    assert {"mel_transform.spectrogram.window", "mel_transform.mel_scale.fb"} <= set(keys)


def test_builds_on_meta_device():
    with torch.device("meta"):
        mel = LogMelSpectrogram()
    assert mel.mel_scale.fb.shape == (1025, 128) and mel.mel_scale.fb.is_meta


def test_chunked_stft_equals_whole():
    mel = LogMelSpectrogram()
    x = torch.randn(2, 512 * 37)
    whole = mel(x)
    for chunk in (1, 5, 36, 100):
        torch.testing.assert_close(mel(x, chunk_frames=chunk), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.2, 3.0])
def test_frame_major_log_mel_equals_direct_stft(seconds):
    """`forward` (chunked rfft, only the bins under a filter) vs the whole STFT and all 1025 bins."""
    mel = LogMelSpectrogram()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, int(44100 * seconds), generator=gen) * torch.logspace(-4, 0, 2)[:, None, None]
    fast, direct = mel(x), mel.reference(x)
    assert fast.shape == direct.shape
    torch.testing.assert_close(fast, direct, rtol=0, atol=2e-5)
