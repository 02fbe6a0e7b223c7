"""Log-mel spectrogram of the ACE-Step v1 vocoder, in plain torch (no torchaudio).

The vocoder's mel front end (what the reference computes before its vocoder and DCAE), with the
released parameters:

    reflect-pad (win − hop)/2 = 768 samples each side → STFT (n_fft 2048, hop 512, periodic Hann,
    center False, onesided) → |X| = sqrt(re² + im² + 1e-6) → slaney mel filterbank
    (128 mels, 40–16000 Hz at 44.1 kHz, slaney area norm) → log(clamp(·, 1e-5)).

A clip of T samples gives T // 512 frames when T is a multiple of 512 (the DCAE pads to 4096).
The buffers carry the reference's state-dict names (`spectrogram.window`, `mel_scale.fb`), so
inside the vocoder they load as `mel_transform.spectrogram.window` / `mel_transform.mel_scale.fb`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from acetune.audio.banded import BandedMatrix

# STFT frames per FFT chunk in `LogMelSpectrogram`: 512 frames x 2048 samples x 4 bytes = 4 MB per
# channel, cache-sized; the whole 6-minute song's windowed frames would be ~250 MB per channel.
_FRAMES_PER_CHUNK = 512

# ---- slaney mel scale (Slaney's Auditory Toolbox; the "slaney" option of librosa/torchaudio) ----
# Linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15.0
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(freq: float) -> float:
    """Hz -> slaney mel for one frequency (python float, as torchaudio `_hz_to_mel` does)."""
    if freq >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + math.log(freq / _MIN_LOG_HZ) / _LOGSTEP
    return freq / _F_SP


def mel_to_hz_slaney(mels: torch.Tensor) -> torch.Tensor:
    """Slaney mel -> Hz, elementwise (no data-dependent indexing, so it runs on the meta device)."""
    linear = _F_SP * mels
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, log, linear)


def slaney_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Triangular mel filters of unit area, in float32: (n_freqs, n_mels).

    Filter m has three edges, `n_mels + 2` points evenly spaced in slaney mel from f_min to f_max
    (converted back to Hz): it rises linearly from 0 at edge m to 1 at edge m + 1 and falls back to
    0 at edge m + 2. Its height is then 2 / (edge[m+2] − edge[m]), so its area (in Hz) is 1 and
    wide high-frequency bands do not outweigh narrow low ones. It is evaluated at the `n_freqs`
    STFT bin frequencies 0 … sr/2. (The same filters as torchaudio `melscale_fbanks` and librosa
    with `norm="slaney", mel_scale="slaney"`, which the reference vocoder uses.)

    Returns:
        (n_freqs, n_mels) tensor; spectrogram (..., n_freqs, F) maps to mel by `fb.T @ spec`.
    """
    # explicit: torch's device context caches its list of factory functions, and a library that patched
    # torch.linspace when that cache was first filled (seen after transformers' CLAP loading) drops it
    device = torch.get_default_device() if device is None else device
    bin_hz = torch.linspace(0, sample_rate // 2, n_freqs, device=device)[:, None]  # (n_freqs, 1)
    edges = mel_to_hz_slaney(torch.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2, device=device))
    lower, peak, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    rising = (bin_hz - lower) / (peak - lower)
    falling = (upper - bin_hz) / (upper - peak)
    triangles = torch.minimum(rising, falling).clamp(min=0.0)  # (n_freqs, n_mels), peak 1
    return triangles * (2.0 / (upper - lower))


# ---- modules (attribute and buffer names are the checkpoint's state-dict keys) ----

class MagnitudeSpectrogram(nn.Module):
    """|STFT| of a reflect-padded clip, without centring (buffer `window`: periodic Hann)."""

    def __init__(self, n_fft: int = 2048, win_length: int = 2048, hop_length: int = 512):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length))  # periodic Hann

    def pad(self, y: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., T + win − hop), reflect-padded by (win − hop) / 2 on each side."""
        lead = y.shape[:-1]
        y = y.reshape(-1, 1, y.shape[-1])  # (B, 1, T): reflect padding wants a channel axis
        pad = self.win_length - self.hop_length
        return F.pad(y, (pad // 2, (pad + 1) // 2), mode="reflect").reshape(*lead, -1)

    def magnitude(self, padded: torch.Tensor) -> torch.Tensor:
        """(..., T') already padded -> (..., n_fft // 2 + 1, (T' − n_fft) // hop + 1) magnitude."""
        lead = padded.shape[:-1]
        # The reference runs the STFT in float32 whatever the model dtype, then casts back.
        spec = torch.stft(padded.reshape(-1, padded.shape[-1]).float(), self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window.float(), center=False,
                          normalized=False, onesided=True, return_complex=True)  # (B, n_fft // 2 + 1, frames)
        mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)  # 1e-6 keeps sqrt' finite at 0
        return mag.to(padded.dtype).reshape(*lead, *mag.shape[1:])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(..., T) waveform -> (..., n_fft // 2 + 1, frames) magnitude in `y`'s dtype."""
        return self.magnitude(self.pad(y))


class MelProjection(nn.Module):
    """Linear-frequency magnitude -> mel bands through the filterbank (buffer `fb`)."""

    def __init__(self, n_mels: int = 128, sample_rate: int = 44100, f_min: float = 40.0,
                 f_max: float = 16000.0, n_stft: int = 1025):
        super().__init__()
        self.register_buffer("fb", slaney_mel_filterbank(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(..., n_stft, F) -> (..., n_mels, F)."""
        return torch.matmul(spec.transpose(-1, -2), self.fb.to(spec.dtype)).transpose(-1, -2)


class LogMelSpectrogram(nn.Module):
    """Waveform -> log-mel, as the reference vocoder's `mel_transform`.

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max: the vocoder config
            (defaults are the released ones: 44100, 2048, 2048, 512, 128, 40, 16000).
    """

    def __init__(self, sample_rate: int = 44100, n_fft: int = 2048, win_length: int = 2048,
                 hop_length: int = 512, n_mels: int = 128, f_min: float = 40.0, f_max: float | None = 16000.0):
        super().__init__()
        self.hop_length = hop_length
        self.spectrogram = MagnitudeSpectrogram(n_fft, win_length, hop_length)
        self.mel_scale = MelProjection(n_mels, sample_rate, f_min, f_max or sample_rate // 2, n_fft // 2 + 1)

    def forward(self, wav: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """(..., T) waveform at `sample_rate` -> (..., n_mels, T // hop) log-mel (natural log).

        Computed frame-major, `chunk_frames` (at most `_FRAMES_PER_CHUNK`) frames at a time: window the
        frames, real FFT, keep only the bins some mel filter covers (744 of 1025 for the released
        config: nothing above f_max), magnitude in place, then frames x bins @ filterbank, the
        filterbank as a banded product (each filter covers a few dozen bins: `audio/banded.py`).
        Frames are independent, so chunking gives the same result; only the chunks at the two ends
        are reflect-padded (the rest read the clip in place). The order of every sum is the STFT's,
        so it equals `mel_scale(spectrogram(wav))` to float rounding (tested).
        """
        spec = self.spectrogram
        lead, length = wav.shape[:-1], wav.shape[-1]
        flat = wav.reshape(-1, length).float()  # the reference runs the STFT in float32
        n_fft, hop = spec.n_fft, spec.hop_length
        left = (spec.win_length - hop) // 2  # reflect padding in front (and (win − hop + 1) // 2 behind)
        right = (spec.win_length - hop + 1) // 2
        frames = (length + left + right - n_fft) // hop + 1
        fb, bins = self._banded_filterbank()
        window = spec.window.float()
        step = min(chunk_frames or _FRAMES_PER_CHUNK, _FRAMES_PER_CHUNK)
        log_mel = flat.new_empty(flat.shape[0], frames, fb.shape[1])
        for f0 in range(0, frames, step):
            f1 = min(frames, f0 + step)
            start, stop = f0 * hop - left, (f1 - 1) * hop + n_fft - left  # the chunk's samples in the clip
            piece = flat[:, max(start, 0):min(stop, length)]
            if start < 0 or stop > length:
                piece = F.pad(piece, (max(-start, 0), max(stop - length, 0)), mode="reflect")
            spectrum = torch.fft.rfft(piece.unfold(-1, n_fft, hop) * window)[..., :bins]
            power = (spectrum * spectrum.conj()).real  # re² + im², rounded as the STFT path rounds it
            magnitude = (power + 1e-6).sqrt_()  # (B, f, bins), contiguous
            for row in range(flat.shape[0]):  # 2-D products write straight into the output
                fb.matmul(magnitude[row], out=log_mel[row, f0:f1])
        log_mel = log_mel.clamp_(min=1e-5).log_().to(wav.dtype if wav.is_floating_point() else torch.float32)
        return log_mel.transpose(-1, -2).reshape(*lead, fb.shape[1], frames)

    def _banded_filterbank(self) -> tuple[BandedMatrix, int]:
        """The filterbank cut to the covered bins, as a banded matrix; rebuilt only when `fb` changes."""
        fb = self.mel_scale.fb
        key = (fb.data_ptr(), fb._version, fb.device)
        if getattr(self, "_banded", (None,))[0] != key:
            covered = (fb != 0).any(dim=1)
            bins = int(covered.nonzero().max()) + 1 if bool(covered.any()) else 1
            # 4096: fastest on the ~1000-row chunks (fewer, wider groups than for longer products)
            self._banded = (key, BandedMatrix(fb[:bins].float(), group_cost=4096), bins)
        return self._banded[1], self._banded[2]

    def reference(self, wav: torch.Tensor) -> torch.Tensor:
        """The same log-mel the direct way (whole STFT, all bins, mel matmul): the check for `forward`."""
        return torch.log(torch.clamp(self.mel_scale(self.spectrogram(wav)), min=1e-5))
