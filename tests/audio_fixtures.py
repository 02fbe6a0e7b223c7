"""Write test audio in every format acetune reads (generated in the test, never committed).

soundfile (libsndfile) writes .wav .flac .aiff .ogg .opus .mp3; PyAV (FFmpeg) writes .m4a (AAC in
MP4), .aac (raw ADTS), .wma (WMA v2 in ASF) and .alac (ALAC in an MP4 container).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

SOUNDFILE_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".aiff": ("AIFF", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
# extension -> (container format, codec)
PYAV_FORMATS = {
    ".m4a": ("mp4", "aac"),
    ".aac": ("adts", "aac"),
    ".wma": ("asf", "wmav2"),
    ".alac": ("mp4", "alac"),
}
ALL_EXTENSIONS = tuple(SOUNDFILE_FORMATS) + tuple(PYAV_FORMATS)
LOSSLESS = (".wav", ".flac", ".aiff", ".alac")
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 6: "5.1", 8: "7.1"}


def test_signal(channels: int, frames: int, sample_rate: int, amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    """(channels, frames) float32: a different sine per channel plus a little noise, never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / sample_rate
    freqs = 220.0 * (1 + np.arange(channels)[:, None] * 0.25)
    wav = amplitude * np.sin(2 * np.pi * freqs * t) + 0.01 * rng.standard_normal((channels, frames))
    return wav.astype(np.float32)


def write_audio(path: str | Path, wav: np.ndarray, sample_rate: int) -> Path:
    """Write (channels, frames) float audio to `path`, format chosen by the extension."""
    path = Path(path)
    ext = path.suffix.lower()
    wav = np.asarray(wav, dtype=np.float32)
    if ext in SOUNDFILE_FORMATS:
        fmt, subtype = SOUNDFILE_FORMATS[ext]
        sf.write(str(path), wav.T, sample_rate, format=fmt, subtype=subtype)
        return path
    container_format, codec = PYAV_FORMATS[ext]
    layout = _LAYOUTS[wav.shape[0]]
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        if codec == "wmav2":
            stream.bit_rate = 128000  # FFmpeg's WMA encoder refuses to open without one
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=sample_rate,
                                      frame_size=ctx.frame_size or None)
        src = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav), format="fltp", layout=layout)
        src.sample_rate = sample_rate
        src.pts = 0
        pts = 0
        for frame in resampler.resample(src) + resampler.resample(None):
            # consecutive pts in samples let the muxer record the encoder delay (MP4 edit list)
            frame.pts, frame.time_base = pts, Fraction(1, sample_rate)
            pts += frame.samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_audio(path: str | Path, channels: int = 2, sample_rate: int = 48000, seconds: float = 1.0,
               amplitude: float = 0.5, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Write a test signal; returns (path, the (channels, frames) array written)."""
    frames = int(round(seconds * sample_rate))
    wav = test_signal(channels, frames, sample_rate, amplitude, seed)
    return write_audio(path, wav, sample_rate), wav
