"""ACE-Step 1.5 preprocessing: audio -> VAE latents, caption + lyrics + metadata -> condition sequence.

Mirrors the official 1.5 trainer's preprocessing (`acestep/training/dataset_builder_modules/
preprocess.py`: `vae_encode`, `encode_text`, `encode_lyrics`, `run_encoder`) but formats and encodes
the text through `AceStepPipeline.encode_prompt`, the same call generation uses, so a LoRA is
trained on exactly the conditioning it later sees. Two differences from the official trainer,
both chosen to match the diffusers pipeline at inference:

- lyrics are wrapped as `# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>`
  (the official preprocess tokenizes the bare lyrics; its inference handler wraps them);
- the timbre encoder reads the checkpoint's `silence_latent[:, :750]` (30 s at 25 Hz) rather than
  one frame of zeros, which diffusers notes is out of distribution.

Song metadata (bpm, keyscale, timesignature, language) comes from `acetune.dataset.song.SongRecord`, which
build-dataset fills from the 1.5 sidecars (`.caption.txt`, `.lyrics.txt`, `.json`) and the
Key-BPM-Finder CSV (`acetune.dataset.sidecar_reader`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from acetune.dataset.song import SongRecord
from acetune.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"  # AceStepPipeline's `vocal_language` default
TIMBRE_SECONDS = 30  # the pipeline feeds the timbre encoder 30 s of silence latent without reference audio


@dataclass
class SongText:
    """What conditions one song: the caption and lyrics plus the metadata the 1.5 template carries."""

    caption: str
    lyrics: str
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str = DEFAULT_LANGUAGE

    @classmethod
    def from_song(cls, song: SongRecord) -> SongText:
        """Caption = the song's tags joined with ", " (or its first recaption when it has no tags)."""
        caption = ", ".join(song.tags) or next((v for v in song.recaption.values() if v), "")
        return cls(caption=caption, lyrics=song.norm_lyrics,
                   bpm=None if song.bpm is None else int(round(song.bpm)),
                   keyscale=song.keyscale, timesignature=song.timesignature,
                   language=song.language or DEFAULT_LANGUAGE)


@dataclass
class EncodedSong:
    """Preprocessed tensors of one song (sequence-first, batch dim dropped)."""

    latents: torch.Tensor  # (C, T) VAE posterior sample, 25 Hz (channel-first, as stored)
    encoder_states: torch.Tensor  # (L, D) packed condition sequence, valid tokens only
    text_prompt: str
    lyrics_prompt: str


def load_encoders(checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    """An `AceStepPipeline` holding only the frozen encoders (VAE, Qwen3, condition encoder); no DiT."""
    from diffusers import AceStepPipeline

    try:
        pipe = AceStepPipeline.from_pretrained(str(checkpoint_dir), transformer=None, scheduler=None,
                                               dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the ACE-Step 1.5 encoders ({e})", path=checkpoint_dir,
                              fix="pass the diffusers ACE-Step 1.5 folder (with model_index.json)") from None
    pipe.to(device)
    for module in (pipe.vae, pipe.text_encoder, pipe.condition_encoder):
        module.requires_grad_(False).eval()
    return pipe


def format_prompts(pipe, text: SongText, duration: float) -> tuple[str, str]:
    """(SFT-template caption text, lyrics text) exactly as `AceStepPipeline.encode_prompt` builds them."""
    return pipe._format_prompt(prompt=text.caption, lyrics=text.lyrics, vocal_language=text.language,
                               audio_duration=duration, bpm=text.bpm, keyscale=text.keyscale,
                               timesignature=text.timesignature)


@torch.no_grad()
def encode_condition(pipe, text: SongText, duration: float) -> torch.Tensor:
    """(L, D) condition-encoder output for one song (what the DiT's cross-attention reads)."""
    device = pipe.condition_encoder.device
    dtype = pipe.condition_encoder.dtype
    text_states, text_mask, lyric_states, lyric_mask = pipe.encode_prompt(
        prompt=text.caption, lyrics=text.lyrics, device=device, vocal_language=text.language,
        audio_duration=duration, bpm=text.bpm, keyscale=text.keyscale, timesignature=text.timesignature)
    frames = math.ceil(TIMBRE_SECONDS * pipe.latents_per_second)
    timbre = pipe.condition_encoder.silence_latent[:, :frames, :].to(device=device, dtype=dtype)
    states, mask = pipe.condition_encoder(
        text_hidden_states=text_states.to(dtype), text_attention_mask=text_mask,
        lyric_hidden_states=lyric_states.to(dtype), lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=timbre,
        refer_audio_order_mask=torch.zeros(1, device=device, dtype=torch.long))
    # `_pack_sequences` moved the valid tokens first; keep only those.
    return states[0, : int(mask[0].sum())]


@torch.no_grad()
def encode_audio(pipe, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(2, N) float audio at the VAE's rate -> (C, T) latents, T = ceil(N / 1920)."""
    vae = pipe.vae
    hop = math.prod(vae.config.downsampling_ratios)
    pad = (-wav.shape[-1]) % hop  # the encoder drops a trailing partial frame; pad so none is lost
    wav = torch.nn.functional.pad(wav, (0, pad))
    posterior = vae.encode(wav[None].to(device=vae.device, dtype=vae.dtype)).latent_dist
    return posterior.sample(generator=generator)[0].float()  # (C, T)


def encode_song(pipe, wav: torch.Tensor, text: SongText, seed: int = 0) -> EncodedSong:
    """Everything training needs from one song.

    Args:
        pipe: from `load_encoders`.
        wav: (2, N) float32 at `pipe.sample_rate` (48 kHz).
        text: caption, lyrics and metadata.
        seed: seeds the VAE posterior sample (the official trainer samples unseeded).
    """
    duration = wav.shape[-1] / pipe.sample_rate
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = encode_audio(pipe, wav, generator=generator if pipe.vae.device.type == "cpu" else None)
    text_prompt, lyrics_prompt = format_prompts(pipe, text, duration)
    return EncodedSong(latents=latents, encoder_states=encode_condition(pipe, text, duration).float(),
                       text_prompt=text_prompt, lyrics_prompt=lyrics_prompt)
