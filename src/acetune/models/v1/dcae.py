"""ACE-Step v1 music codec: stereo 48 kHz audio <-> DCAE latents (N, 8, 16, F), via log-mel and the vocoder.

Mirrors the reference `MusicDCAE` (`acestep/music_dcae/music_dcae_pipeline.py`, `encode`/`decode`):

    encode: resample to 44.1 kHz -> zero-pad the end to a multiple of 4096 samples -> vocoder log-mel
            (N, 2, 128, T/512) -> (mel + 11) / 14 -> (x − 0.5) / 0.5 -> DCAE encoder (÷8 in time and
            mel) -> (z − shift) · scale.  latent_lengths = audio_lengths / sr · 44100 / 512 / 8.
    decode: z / scale + shift -> DCAE decoder -> ×0.5 + 0.5 -> ×14 − 11 -> vocoder per channel
            -> (2, F·8·512) at 44.1 kHz -> optional resample to `sr` -> optional cut to audio_lengths.

Long inputs run in windows so memory stays flat with duration: the DCAE encoder and decoder through
`dcae_stream` (local layers window by window with more context than their receptive field, the
EfficientViT attention in two passes with song-wide statistics: equal to one pass up to float
rounding), the vocoder at most `VOCODER_WINDOW` mel frames with more context than its receptive
field (also equal to one pass up to float rounding).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC
from torch import nn

from acetune.audio.resample import resample
from acetune.errors import CheckpointError
from acetune.layout import CONFIG_FILE, V1_DCAE_DIR, V1_VOCODER_DIR, WEIGHTS_FILE, WEIGHTS_INDEX_FILE
from acetune.models.v1.dcae_stream import decode_stream, encode_stream, plan_windows
from acetune.models.v1.vocoder import ADaMoSHiFiGANV1

__all__ = ["MusicDCAE", "plan_windows", "latent_lengths_for"]

logger = logging.getLogger(__name__)

# Reference MusicDCAE constants.
DCAE_SAMPLE_RATE = 44100  # the vocoder's mel rate; everything inside the codec runs at 44.1 kHz
SOURCE_SAMPLE_RATE = 48000  # encode's input rate when sr is None
HOP = 512  # samples per mel frame
TIME_MULTIPLE = 8  # mel frames per latent frame
MIN_MEL, MAX_MEL = -11.0, 3.0
SCALE_FACTOR, SHIFT_FACTOR = 0.1786, -1.9091  # not the AutoencoderDC config's scaling_factor (unused)

# Window sizes, in latent frames (1 latent frame = 8 mel frames = 4096 samples = 92.9 ms). Encoder and
# decoder windows are exact (`dcae_stream`), so the size only trades memory for a little recomputed
# context (2 x STREAM_CONTEXT frames per window, ~7% at 512); a clip of <= 512 frames (47.5 s) runs the
# plain one-pass forward. Peak memory and speed per option: benchmarks/codec.py, docs/benchmarks.md.
ENCODE_WINDOW = DCAE_WINDOW = 512
MEL_CHUNK = 4096  # STFT frames per chunk in `dcae_input` (exact; bounds the spectrogram's memory)
VOCODER_WINDOW, VOCODER_CONTEXT = 1024, 96  # mel frames; the vocoder's receptive field is ~90 frames


def latent_lengths_for(audio_lengths: torch.Tensor, sr: int) -> torch.Tensor:
    """Valid latent frames per clip, mirroring the reference's float arithmetic and truncation.

    Args:
        audio_lengths: (N,) samples at `sr` (integer or float tensor).
    Returns:
        (N,) int64 = trunc(audio_lengths / sr · 44100 / 512 / 8), evaluated in float32 like the reference.
    """
    return (torch.as_tensor(audio_lengths) / sr * DCAE_SAMPLE_RATE / HOP / TIME_MULTIPLE).long()


class MusicDCAE(nn.Module):
    """The v1 codec: a diffusers `AutoencoderDC` (mel <-> latent) and the vocoder (mel <-> waveform).

    Build with `MusicDCAE.from_pretrained(checkpoint_dir)` (reads `music_dcae_f8c8/` and
    `music_vocoder/`) or `MusicDCAE(dcae, vocoder)` from modules you made.
    """

    def __init__(self, dcae: AutoencoderDC, vocoder: ADaMoSHiFiGANV1):
        super().__init__()
        self.dcae = dcae.eval()
        self.vocoder = vocoder.eval()

    @property
    def device(self) -> torch.device:
        return next(self.dcae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dcae.parameters()).dtype

    # ---- loading and saving in the official layout ----

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> MusicDCAE:
        """Load `<checkpoint_dir>/music_dcae_f8c8/` and `<checkpoint_dir>/music_vocoder/`.

        Raises CheckpointError (one line: folder, reason, fix) for a missing folder or file, a config
        of another model, or weights that do not fit the config.
        """
        root = Path(checkpoint_dir)
        dcae = _load_component(AutoencoderDC, root, V1_DCAE_DIR, ("AutoencoderDC",), dtype)
        vocoder = _load_component(ADaMoSHiFiGANV1, root, V1_VOCODER_DIR, ("ADaMoSHiFiGANV1",), dtype)
        return cls(dcae, vocoder).to(device)

    def save_pretrained(self, checkpoint_dir: str | os.PathLike) -> None:
        """Write both sub-folders in the official layout (config.json + safetensors each)."""
        root = Path(checkpoint_dir)
        self.dcae.save_pretrained(root / V1_DCAE_DIR)
        self.vocoder.save_pretrained(root / V1_VOCODER_DIR)

    # ---- encode ----

    def dcae_input(self, audio_44k: torch.Tensor) -> torch.Tensor:
        """(N, 2, T) audio at 44.1 kHz -> normalised DCAE input (N, 2, 128, ceil(T / 4096) · 8), float32.

        The end is zero-padded to a multiple of 8 · 512 samples first (reference `encode`).
        """
        multiple = TIME_MULTIPLE * HOP
        audio_44k = F.pad(audio_44k, (0, -audio_44k.shape[-1] % multiple))
        mel = self.vocoder.mel_transform(audio_44k.float(), chunk_frames=MEL_CHUNK)  # (N, 2, 128, frames)
        mel = (mel - MIN_MEL) / (MAX_MEL - MIN_MEL)
        return (mel - 0.5) / 0.5  # torchvision Normalize(0.5, 0.5) in the reference

    @torch.no_grad()
    def encode(self, audios: torch.Tensor, audio_lengths: torch.Tensor | None = None, sr: int | None = None,
               window: int | None = ENCODE_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio -> latents.

        Args:
            audios: (N, 2, T) stereo waveform at `sr` (48 kHz when sr is None), any float dtype/device.
            audio_lengths: (N,) valid samples per clip; default T for every clip.
            sr: input sample rate; None means 48000 (reference default).
            window: DCAE window in latent frames (None: one pass; either way the same latents).
        Returns:
            latents (N, 8, 16, ceil(T44 / 4096)) in the model dtype, latent_lengths (N,) int64.
        """
        if audios.ndim != 3 or audios.shape[1] != 2:
            raise ValueError(f"encode expects stereo audio (N, 2, T), got shape {tuple(audios.shape)}")
        sr = SOURCE_SAMPLE_RATE if sr is None else int(sr)
        if audio_lengths is None:
            audio_lengths = torch.full((audios.shape[0],), audios.shape[-1], dtype=torch.long)
        audio = resample(audios.to(self.device, torch.float32), sr, DCAE_SAMPLE_RATE)
        latents = [self._encode_mel(self.dcae_input(clip[None]), window) for clip in audio]
        latents = (torch.cat(latents) - SHIFT_FACTOR) * SCALE_FACTOR
        return latents, latent_lengths_for(torch.as_tensor(audio_lengths).cpu(), sr).to(latents.device)

    def _encode_mel(self, mel: torch.Tensor, window: int | None) -> torch.Tensor:
        """(1, 2, 128, 8·L) normalised mel -> (1, 8, 16, L) raw encoder output."""
        mel = mel.to(self.dtype)
        if window is None:
            return self.dcae.encoder(mel)
        return encode_stream(self.dcae.encoder, mel, window, TIME_MULTIPLE)

    # ---- decode ----

    @torch.no_grad()
    def decode_mel(self, latents: torch.Tensor, window: int | None = DCAE_WINDOW) -> torch.Tensor:
        """(1, 8, 16, L) scaled latents -> (1, 2, 128, 8·L) log-mel (de-normalised); window None: one pass."""
        z = latents.to(self.device, self.dtype) / SCALE_FACTOR + SHIFT_FACTOR
        mel = self.dcae.decoder(z) if window is None else decode_stream(self.dcae.decoder, z, window)
        mel = mel * 0.5 + 0.5
        return mel * (MAX_MEL - MIN_MEL) + MIN_MEL

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, window: int | None = VOCODER_WINDOW,
               context: int = VOCODER_CONTEXT) -> torch.Tensor:
        """(C, 128, F) log-mel -> (C, F · 512) float32 waveform at 44.1 kHz on the CPU.

        One channel and one window at a time, so device memory depends on `window`, not on F.
        """
        vdtype = next(self.vocoder.parameters()).dtype
        channels = []
        for ch in mel:
            pieces = []
            for s, e, c0, c1 in plan_windows(ch.shape[-1], window, context):
                wav = self.vocoder(ch[None, :, s:e].to(vdtype))  # (1, 1, (e − s) · 512)
                pieces.append(wav[0, 0, (c0 - s) * HOP:(c1 - s) * HOP].float().cpu())
            channels.append(torch.cat(pieces))
        return torch.stack(channels)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, audio_lengths: torch.Tensor | None = None, sr: int | None = None,
               window: int | None = DCAE_WINDOW, vocoder_window: int | None = VOCODER_WINDOW,
               vocoder_context: int = VOCODER_CONTEXT) -> tuple[int, list[torch.Tensor]]:
        """Latents -> waveforms.

        Args:
            latents: (N, 8, 16, L) as returned by `encode`.
            audio_lengths: optional (N,) samples at the output rate to keep per clip.
            sr: output sample rate; None keeps the vocoder's 44.1 kHz (generation passes 48000).
            window: DCAE decoder window in latent frames (None: one pass; the same mel either way);
                vocoder_window/_context in mel frames.
        Returns:
            (sr, [ (2, samples) float32 CPU tensor per clip ]).
        """
        out_sr = DCAE_SAMPLE_RATE if sr is None else int(sr)
        wavs = []
        for i, z in enumerate(latents):
            mel = self.decode_mel(z[None], window)[0]  # (2, 128, 8L)
            wav = resample(self.vocode(mel, vocoder_window, vocoder_context), DCAE_SAMPLE_RATE, out_sr)
            if audio_lengths is not None:
                wav = wav[:, :int(audio_lengths[i])]
            wavs.append(wav)
        return out_sr, wavs


def _load_component(cls, root: Path, name: str, class_names: tuple[str, ...], dtype: torch.dtype):
    """from_pretrained on `root/name`, turning every way it can be wrong into a CheckpointError."""
    fix = (f"point at the ACE-Step v1 checkpoint folder (it holds {V1_DCAE_DIR}/ and {V1_VOCODER_DIR}/, "
           "e.g. a download of ACE-Step/ACE-Step-v1-3.5B)")
    if not root.is_dir():
        raise CheckpointError("checkpoint folder not found", path=root, fix=fix)
    folder = root / name
    if not folder.is_dir():
        found = ", ".join(sorted(p.name + "/" for p in root.iterdir() if p.is_dir())) or "no sub-folders"
        raise CheckpointError(f"no {name}/ folder (found: {found})", path=root, fix=fix)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"missing {CONFIG_FILE}", path=folder, fix=fix)
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(f"unreadable {CONFIG_FILE} ({err})", path=folder, fix=fix) from None
    if class_name not in class_names:
        raise CheckpointError(f"config.json describes a {class_name}, expected {' or '.join(class_names)}",
                              path=folder, fix=f"{name}/ must hold the official {name} files")
    if not ((folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()):
        raise CheckpointError(f"missing {WEIGHTS_FILE}", path=folder, fix=fix)
    try:
        model, info = cls.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.split(" If you want")[0]  # drop diffusers' advice to load mismatched sizes
        raise CheckpointError(f"cannot load {name}: {reason[:300]}", path=folder,
                              fix="re-download the folder; its weights do not match its config.json") from None
    bad = info.get("missing_keys", []) or info.get("mismatched_keys", [])
    if bad:
        raise CheckpointError(f"{len(bad)} weights missing or of the wrong shape (first: {bad[0]})", path=folder,
                              fix="re-download the folder; its weights do not match its config.json")
    if info.get("unexpected_keys"):
        logger.warning("%s: ignoring %d unexpected weights", folder, len(info["unexpected_keys"]))
    return model.eval()


def tiny_dcae_config() -> dict:
    """The golden tiny AutoencoderDC (../shared/golden/codec/meta.json `dcae_tiny_config`): the official
    block structure with channels 16/16/32/32 and attention head dim 8."""
    return dict(
        in_channels=2, latent_channels=8, attention_head_dim=8,
        encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
        decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
        encoder_block_out_channels=[16, 16, 32, 32], decoder_block_out_channels=[16, 16, 32, 32],
        encoder_layers_per_block=[2, 2, 3, 3], decoder_layers_per_block=[3, 3, 3, 3],
        encoder_qkv_multiscales=[[], [], [5], [5]], decoder_qkv_multiscales=[[], [], [5], [5]],
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )


def official_dcae_config() -> dict:
    """The released `music_dcae_f8c8/config.json` values (source: golden manifest)."""
    cfg = tiny_dcae_config()
    cfg.update(attention_head_dim=32, encoder_block_out_channels=[128, 256, 512, 1024],
               decoder_block_out_channels=[128, 256, 512, 1024])
    return cfg
