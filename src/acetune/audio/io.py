"""Audio I/O for every stage: `audio_info`, `audio_read`, `audio_write`, plus the reference loader.

Backends are hidden here: soundfile (libsndfile) for .wav .flac .aiff .ogg .opus .mp3, PyAV (FFmpeg)
for .m4a .aac .wma .alac and as a fallback for anything soundfile cannot open. Arrays are
(channels, frames) float32 in [-1, 1] as decoded.

- `audio_info(path)`: rate, channels, frames, duration from the header (no full decode).
- `audio_read(path, sample_rate=48000)`: float32 (2, T): mono duplicated, more than two channels
  down-mixed (`downmix_stereo`), resampled with the reference's filter (`acetune.audio.resample`).
- `load_song(path, max_duration=None)`: the reference's training loader (`get_audio_rules`,
  mirroring `Text2MusicDataset.get_audio`): crop, first two channels, resample, clamp, pad to 3 s,
  reject silence.
- `audio_write(path, wav, sample_rate)`: .wav/.flac/.mp3, atomically (temp name, then rename).

Lossy codecs and length: .mp3 (LAME/Xing gapless header) and .m4a (MP4 edit list) decode to the
exact written length; raw ADTS .aac has no length field, so the decoder's output keeps the encoder
delay (1024 samples for FFmpeg's encoder) and the padding of the last 1024-sample frame; .wma (ASF)
has no sample-exact length either (frames of 2048 samples at 44.1/48 kHz).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acetune.audio.library_messages import attributed_to
from acetune.audio.resample import resample
from acetune.errors import InputError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000  # the rate every ACE-Step v1 stage works at
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".opus", ".mp3")
PYAV_EXTENSIONS = (".m4a", ".aac", ".wma", ".alac", ".mp4")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + PYAV_EXTENSIONS

# reference rules (fork `Text2MusicDataset.get_audio` / `is_silent_audio`)
MIN_SECONDS = 3  # clips are zero-padded to at least 3 s at 48 kHz
SILENCE_THRESHOLD = 0.95  # silent if more than 95% of sample positions are zero on all channels
FORK_MAX_SECONDS = 360  # the fork crops longer songs to their first 360 s

# FFmpeg demuxers whose header length is sample-exact (edit list); decoding is cut to it.
_EXACT_LENGTH_CONTAINERS = ("mov", "mp4", "m4a")
_FIX_UNREADABLE = "check that the file plays in a media player; re-export it as .wav or .flac"


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file. `frames` is per channel at `sample_rate`."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    backend: str  # "soundfile" or "pyav"
    truncated: bool = False  # the header promises more data than the file holds (WAV/AIFF chunk sizes)

    @property
    def duration(self) -> float:
        """Seconds, from the header (an estimate for raw .aac/.wma, exact otherwise)."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError("audio file not found", path=path, fix="check the path")
    if path.stat().st_size == 0:
        raise InputError("audio file is empty (0 bytes)", path=path, fix="re-copy or re-export the file")


def _use_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTENSIONS


# ---- header ----------------------------------------------------------------------------------

def _info_soundfile(path: Path) -> AudioInfo:
    import soundfile as sf

    i = sf.info(str(path))
    # libsndfile shrinks `frames` to what a cut-off WAV/AIFF holds and notes it in its parse log
    log = i.extra_info or ""
    truncated = "(should be" in log or "> file length" in log
    return AudioInfo(str(path), int(i.samplerate), int(i.channels), int(i.frames), "soundfile", truncated)


def _info_pyav(path: Path) -> AudioInfo:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise InputError("the file has no audio stream", path=path, fix=_FIX_UNREADABLE)
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:  # estimated by FFmpeg (e.g. from the bit rate)
            seconds = container.duration / 1_000_000
        else:
            seconds = 0.0
        channels = int(stream.codec_context.channels or 0)
        return AudioInfo(str(path), rate, channels, int(round(seconds * rate)), "pyav")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels and length from the header, without decoding the audio.

    Raises:
        InputError: missing, empty, or not a readable audio file.
    """
    path = Path(path)
    _check_file(path)
    errors = []
    for reader in ((_info_soundfile, _info_pyav) if _use_soundfile(path) else (_info_pyav,)):
        try:
            info = reader(path)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - any backend failure means "try the next one"
            errors.append(f"{e.__class__.__name__}: {e}")
            continue
        if info.sample_rate <= 0 or info.channels <= 0:
            errors.append("header has no sample rate or channel count")
            continue
        return info
    raise InputError(f"cannot read audio header ({errors[-1]})", path=path, fix=_FIX_UNREADABLE)


# ---- decode ----------------------------------------------------------------------------------

def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    return np.ascontiguousarray(data.T), int(sr)


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise InputError("the file has no audio stream", path=path, fix=_FIX_UNREADABLE)
        stream = container.streams.audio[0]
        rate = int(stream.rate or 0)
        converter = av.AudioResampler(format="fltp")  # same rate and layout, planar float32
        for frame in container.decode(stream):
            rate = int(frame.sample_rate)
            for out in converter.resample(frame):
                chunks.append(out.to_ndarray())  # (C, n)
        exact = stream.duration is not None and any(n in container.format.name for n in _EXACT_LENGTH_CONTAINERS)
        frames = int(round(float(stream.duration * stream.time_base) * rate)) if exact else None
    if not chunks:
        raise InputError("no audio could be decoded (empty or truncated stream)", path=path, fix=_FIX_UNREADABLE)
    wav = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if frames is not None and 0 < frames < wav.shape[1]:
        wav = wav[:, :frames]  # drop the last AAC frame's padding (the MP4 edit list's length)
    return wav, rate


def decode(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Decode a whole file at its own rate: ((channels, frames) float32 tensor, sample_rate).

    Raises:
        InputError: missing, empty, corrupt, truncated beyond decoding, or no audio stream.
    """
    path = Path(path)
    _check_file(path)
    errors = []
    for reader in ((_decode_soundfile, _decode_pyav) if _use_soundfile(path) else (_decode_pyav,)):
        try:
            with attributed_to(path):  # libraries' own messages, re-said naming this file
                wav, sr = reader(path)
        except InputError as e:
            errors.append(e.reason)
            continue
        except Exception as e:  # noqa: BLE001 - any backend failure means "try the next one"
            errors.append(f"{e.__class__.__name__}: {e}")
            continue
        if wav.shape[1] == 0:
            errors.append("the file holds no samples")
            continue
        if not np.isfinite(wav).all():
            raise InputError("decoded audio contains NaN or infinite samples", path=path, fix=_FIX_UNREADABLE)
        return torch.from_numpy(wav), sr
    raise InputError(f"cannot decode audio ({errors[-1]})", path=path, fix=_FIX_UNREADABLE)


# (gain to left, gain to right) per input channel, in FFmpeg/WAVE channel order. ITU-R BS.775
# style: centre and surrounds at -3 dB, LFE dropped; each output is then divided by its gain sum.
_C = 1 / math.sqrt(2)
_DOWNMIX = {
    3: [(1, 0), (0, 1), (_C, _C)],  # FL FR FC
    4: [(1, 0), (0, 1), (_C, 0), (0, _C)],  # FL FR BL BR (quad)
    5: [(1, 0), (0, 1), (_C, _C), (_C, 0), (0, _C)],  # FL FR FC BL BR
    6: [(1, 0), (0, 1), (_C, _C), (0, 0), (_C, 0), (0, _C)],  # 5.1: FL FR FC LFE BL BR
    7: [(1, 0), (0, 1), (_C, _C), (0, 0), (_C, _C), (_C, 0), (0, _C)],  # 6.1: ... BC SL SR
    8: [(1, 0), (0, 1), (_C, _C), (0, 0), (_C, 0), (0, _C), (_C, 0), (0, _C)],  # 7.1: ... BL BR SL SR
}


def downmix_stereo(wav: torch.Tensor) -> torch.Tensor:
    """(C, T) -> (2, T): mono duplicated, stereo unchanged, more channels mixed down.

    Layouts of 3-8 channels use the table above; more than 8 channels (no standard layout) put
    even-numbered channels left and odd-numbered right, averaged.
    """
    c = wav.shape[0]
    if c == 1:
        return wav.expand(2, -1).clone()
    if c == 2:
        return wav
    if c in _DOWNMIX:
        gains = torch.tensor(_DOWNMIX[c], dtype=wav.dtype).T  # (2, C)
    else:
        gains = torch.zeros(2, c, dtype=wav.dtype)
        gains[0, 0::2] = 1
        gains[1, 1::2] = 1
    gains = gains / gains.sum(dim=1, keepdim=True)  # never louder than the loudest input
    return gains @ wav


def audio_read(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode to float32 stereo at `sample_rate`.

    Args:
        path: any supported audio file.
        sample_rate: output rate (torchaudio-identical sinc resampling when it differs).
    Returns:
        (2, T) float32 tensor, T = ceil(frames · sample_rate / file_rate).
    """
    wav, sr = decode(path)
    return resample(downmix_stereo(wav), sr, sample_rate).contiguous()


# ---- reference loader ------------------------------------------------------------------------

def is_silent(wav: torch.Tensor, threshold: float = SILENCE_THRESHOLD) -> bool:
    """Mirrors the reference `is_silent_audio`: > threshold of positions zero on every channel."""
    silent = torch.all(wav == 0, dim=0)
    return torch.mean(silent.float()).item() > threshold


def get_audio_rules(wav: torch.Tensor, sr: int, max_duration: float | None = None) -> torch.Tensor | None:
    """The reference's per-clip rules on a decoded (C, T) clip; None when it would be rejected.

    Mirrors `Text2MusicDataset.get_audio` (woct0rdho/ACE-Step): crop to the first `max_duration`
    seconds at the file's rate (the fork uses 360), duplicate mono, keep the first two channels
    (note: not a down-mix), resample to 48 kHz, clamp to [-1, 1], zero-pad to at least 3 s, and
    reject as silent (`is_silent`). Returns (2, max(T48, 144000)) float32.
    """
    if max_duration is not None and wav.shape[-1] > sr * max_duration:
        wav = wav[:, : int(sr * max_duration)]
    if wav.shape[0] == 1:
        wav = torch.cat([wav, wav], dim=0)
    wav = resample(wav[:2], sr, SAMPLE_RATE)
    wav = torch.clamp(wav, -1.0, 1.0)
    min_len = SAMPLE_RATE * MIN_SECONDS
    if wav.shape[-1] < min_len:
        wav = torch.nn.functional.pad(wav, (0, min_len - wav.shape[-1]))
    if is_silent(wav):
        return None
    return wav


def load_song(path: str | os.PathLike, max_duration: float | None = None) -> torch.Tensor:
    """Decode a song and apply the reference rules (`get_audio_rules`).

    Returns:
        (2, T) float32 at 48 kHz, T >= 144000 (zero-padded).
    Raises:
        InputError: unreadable audio, or silent (including anything shorter than 0.15 s).
    """
    wav, sr = decode(path)
    out = get_audio_rules(wav, sr, max_duration)
    if out is None:
        raise InputError("audio is silent (more than 95% of the padded 3 s+ clip is digital zero)",
                         path=path, fix="remove the file or replace it with the real recording")
    return out


# ---- write -----------------------------------------------------------------------------------

_WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".mp3": ("MP3", "MPEG_LAYER_III")}


def audio_write(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write (C, T) float audio as .wav / .flac (16-bit) or .mp3, atomically.

    The file is encoded under a temporary name in the same folder and renamed into place, so a
    crash never leaves a half-written file; the temporary file is removed if encoding fails.
    """
    import soundfile as sf

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _WRITE_FORMATS:
        raise InputError(f"cannot write {ext or 'files without an extension'}", path=path,
                         fix="use a .wav, .flac or .mp3 file name")
    data = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if data.ndim == 1:
        data = data[None]
    fmt, subtype = _WRITE_FORMATS[ext]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=ext + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(data, -1.0, 1.0).T, int(sample_rate), format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
