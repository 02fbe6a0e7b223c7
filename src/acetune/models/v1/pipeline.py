"""ACE-Step v1 text-to-music: prompt + lyrics + duration + seed -> 48 kHz stereo waveform.

Mirrors the text2music path of the reference's `ACEStepPipeline.__call__` (batch 1):

    text states  = UMT5(prompt)                         (`TextEncoder.encode(path="pipeline")`)
    null states  = UMT5(prompt) with ERG-tag damping     (`encode_erg_null`, when use_erg_tag)
    speaker      = zeros (1, speaker_embedding_dim)      ("not supported for released checkpoint")
    lyric ids    = `tokenize_pipeline(lyrics)`, mask 1; empty lyrics: ids [[0]], mask [[0]]
    latents      = `text2music_latents(..., frames=latent_frames(duration))`
    waveform     = `MusicDCAE.decode(latents, sr=48000)`  (windowed: bounded memory for long songs)

Length rule: frames = int(duration · 44100 / 4096) (reference), so the file holds
ceil(frames · 4096 · 48000 / 44100) samples: at most one latent frame (92.9 ms) shorter than asked.

Memory: with `free_encoders=True` the UMT5 encoder is loaded, used and freed before sampling, and
the codec is loaded only for decoding, so the peak is the transformer plus the larger of UMT5
(about 1 GB in bf16) and the codec with its bounded decode buffer (512-latent-frame DCAE windows,
1024-mel-frame vocoder windows, one channel at a time).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import replace
from pathlib import Path

import torch

from acetune.errors import UsageError
from acetune.layout import V1_TEXT_ENCODER_DIR, V1_TRANSFORMER_DIR
from acetune.lora.file import NO_SCALE_WARN, LoraFile, read_lora
from acetune.lora.fuse import FusedLoras, fuse_loras
from acetune.models.v1.loading import check_checkpoint
from acetune.models.v1.sampler import (
    ERG_DIFFUSION_BLOCKS,
    ERG_LYRIC_BLOCKS,
    SamplerSettings,
    generators_from_seeds,
    latent_frames,
    text2music_latents,
)
from acetune.models.v1.text_encoder import ERG_TAG_BLOCKS
from acetune.models.v1.transformer import ACEStepTransformer2DModel

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000  # the reference pipeline decodes with sr=48000
MIN_DURATION = 512 * 8 / 44100  # one latent frame (92.9 ms): shorter durations give 0 frames
MAX_TRAINED_DURATION = 240.0  # the longest clips the release was trained on (reference UI maximum)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None -> cuda if available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None -> bfloat16 on a GPU, float32 on the CPU; else "bf16"/"fp16"/"fp32" or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise UsageError(f"unknown dtype {dtype!r}", fix="use auto, bf16, fp16 or fp32")
    return names[dtype]


def check_duration(duration: float) -> float:
    """Raise UsageError unless `duration` gives at least one latent frame; warn past 240 s."""
    if not duration == duration or duration < MIN_DURATION or duration == float("inf"):
        raise UsageError(f"--duration {duration} is too short (one latent frame is {MIN_DURATION:.3f} s)",
                         fix="pass a duration in seconds, e.g. --duration 30")
    if duration > MAX_TRAINED_DURATION:
        logger.warning("duration %.0f s is longer than the 240 s the model was trained on; quality may drop",
                       duration)
    return float(duration)


def output_samples(duration: float) -> int:
    """Samples of the 48 kHz output for `duration` (see the length rule in the module docstring)."""
    return -(-latent_frames(duration) * 4096 * SAMPLE_RATE // 44100)


def supported_settings(settings: SamplerSettings, transformer) -> SamplerSettings:
    """Turn off the ERG hooks a (small test) model has no blocks for, with a warning; else unchanged."""
    changes = {}
    if settings.use_erg_diffusion and len(transformer.transformer_blocks) <= max(ERG_DIFFUSION_BLOCKS):
        changes["use_erg_diffusion"] = False
    if settings.use_erg_lyric and len(transformer.lyric_encoder.encoders) <= max(ERG_LYRIC_BLOCKS):
        changes["use_erg_lyric"] = False
    if changes:
        logger.warning("this transformer is too small for %s; turned off", ", ".join(changes))
        settings = replace(settings, **changes)
    return settings


def _free(module) -> None:
    """Drop a module and give its memory back (the caller must hold no other reference)."""
    del module
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class V1Generator:
    """Renders songs with an ACE-Step v1 transformer; loads the other parts from a checkpoint on demand.

    Build with `V1Generator.from_pretrained(checkpoint_dir)` for generation, or `V1Generator(transformer,
    checkpoint_dir=...)` with an already-loaded transformer (the trainer passes its model with the peft
    adapter active). `text_encoder` (`TextEncoder`), `codec` (`MusicDCAE`) and `lyric_tokenizer`
    (`LyricTokenizer`) may be given too; missing ones are loaded from `checkpoint_dir` when first needed.

    Args:
        free_encoders: load UMT5 and the codec for each render and free them right after use (lowest
            peak memory; each render pays their loading time). False keeps them once loaded.
        device, dtype: for the parts this object loads (default: the transformer's).
        lyric_vocab: the lyric BPE vocab; default `vocab.json` next to the checkpoint or the user cache.
    """

    def __init__(self, transformer: torch.nn.Module, *, checkpoint_dir: str | Path | None = None,
                 text_encoder=None, codec=None, lyric_tokenizer=None, free_encoders: bool = False,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 lyric_vocab: str | Path | None = None):
        param = next(transformer.parameters())
        self.transformer = transformer
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.text_encoder, self.codec, self.lyric_tokenizer = text_encoder, codec, lyric_tokenizer
        self.free_encoders = free_encoders
        self.device = param.device if device is None else torch.device(device)
        self.dtype = param.dtype if dtype is None else dtype
        self.lyric_vocab = lyric_vocab
        self.fused: FusedLoras | None = None

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", free_encoders: bool = False,
                        lyric_vocab: str | Path | None = None) -> V1Generator:
        """Check the folder (CheckpointError naming the first missing file) and load the transformer.

        UMT5, the codec and the lyric tokenizer are loaded at the first render that needs them, so a
        bad LoRA or flag fails before any encoder is read.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        check_checkpoint(ACEStepTransformer2DModel, checkpoint_dir)
        transformer = ACEStepTransformer2DModel.from_pretrained(Path(checkpoint_dir) / V1_TRANSFORMER_DIR,
                                                                torch_dtype=dtype, device=device)
        return cls(transformer, checkpoint_dir=checkpoint_dir, free_encoders=free_encoders, device=device,
                   dtype=dtype, lyric_vocab=lyric_vocab)

    # ---- LoRAs ----

    def apply_loras(self, loras, keep_original: bool = True) -> list[LoraFile]:
        """Fuse LoRAs into the transformer: `loras` is a list of (path or LoraFile, strength).

        Replaces any LoRAs applied before (their weights are restored first). With
        `keep_original=False` that restore is impossible (saves a CPU copy of the changed weights).
        """
        self.remove_loras()
        files = [(item if isinstance(item, LoraFile) else read_lora(item, if_no_scale=NO_SCALE_WARN), float(s))
                 for item, s in loras]
        self.fused = fuse_loras(self.transformer, files, keep_original=keep_original)
        return [f for f, _ in files]

    def remove_loras(self) -> None:
        """Restore the transformer's weights from before `apply_loras` (exact)."""
        if self.fused is not None:
            self.fused.restore()
            self.fused = None

    # ---- parts loaded on demand ----

    def _need_dir(self, what: str) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError(f"no {what} was given and no checkpoint_dir to load it from")
        return self.checkpoint_dir

    def _text_encoder(self):
        if self.text_encoder is None:
            from acetune.models.v1.text_encoder import TextEncoder

            folder = self._need_dir("text encoder") / V1_TEXT_ENCODER_DIR
            self.text_encoder = TextEncoder.from_pretrained(folder, dtype=self.dtype, device=self.device)
        return self.text_encoder

    def _codec(self):
        if self.codec is None:
            from acetune.models.v1.dcae import MusicDCAE

            self.codec = MusicDCAE.from_pretrained(self._need_dir("codec"), dtype=self.dtype, device=self.device)
        return self.codec

    def _lyric_ids(self, lyrics: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, T) ids and mask; empty lyrics -> [[0]] / [[0]] as the reference `__call__`."""
        if len(lyrics) == 0:
            zero = torch.zeros(1, 1, dtype=torch.long, device=self.device)
            return zero, zero.clone()
        if self.lyric_tokenizer is None:
            from acetune.models.v1.lyrics import LyricTokenizer

            self.lyric_tokenizer = LyricTokenizer.from_vocab(self.lyric_vocab, self.checkpoint_dir)
        tokens = self.lyric_tokenizer.tokenize_pipeline_checked(lyrics)
        for warning in tokens.warnings:
            logger.warning("%s", warning)
        ids = torch.tensor([tokens.ids], dtype=torch.long, device=self.device)
        return ids, torch.ones_like(ids)

    # ---- rendering ----

    @torch.no_grad()
    def encode_prompt(self, prompt: str, use_erg_tag: bool = True) -> tuple[torch.Tensor, torch.Tensor,
                                                                            torch.Tensor | None]:
        """UMT5 states (1, T, d), mask (1, T) and ERG-tag null states (or None) on the transformer's device."""
        encoder = self._text_encoder()
        if use_erg_tag and len(encoder.model.encoder.block) <= max(ERG_TAG_BLOCKS):
            logger.warning("this text encoder is too small for use_erg_tag; turned off")
            use_erg_tag = False
        states, mask = encoder.encode([prompt], path="pipeline")
        null = encoder.encode_erg_null([prompt]) if use_erg_tag else None
        if self.free_encoders:
            self.text_encoder = None
            _free(encoder)
        param = next(self.transformer.parameters())
        move = dict(device=param.device, dtype=param.dtype)
        return states.to(**move), mask.to(param.device), None if null is None else null.to(**move)

    @torch.no_grad()
    def sample(self, prompt: str, lyrics: str = "", duration: float = 30.0, seed: int = 0,
               settings: SamplerSettings = SamplerSettings(), use_erg_tag: bool = True) -> torch.Tensor:
        """Latents (1, 8, 16, latent_frames(duration)) for one song; the transformer runs in eval mode."""
        frames = latent_frames(check_duration(duration))
        settings = supported_settings(settings, self.transformer)
        text, text_mask, text_null = self.encode_prompt(prompt, use_erg_tag and settings.guided and settings.use_erg_lyric)
        lyric_ids, lyric_mask = self._lyric_ids(lyrics)
        param = next(self.transformer.parameters())
        speaker = torch.zeros(1, self.transformer.config.speaker_embedding_dim, device=param.device,
                              dtype=param.dtype)
        was_training = self.transformer.training
        self.transformer.eval()  # LoRA dropout off while rendering
        try:
            return text2music_latents(self.transformer, text, text_mask, speaker, lyric_ids.to(param.device),
                                      lyric_mask.to(param.device), frames=frames,
                                      generators=generators_from_seeds([seed]), settings=settings,
                                      encoder_text_hidden_states_null=text_null)
        finally:
            self.transformer.train(was_training)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 8, 16, F) latents -> (2, samples) float32 CPU waveform at 48 kHz (windowed decode)."""
        codec = self._codec()
        _, wavs = codec.decode(latents, sr=SAMPLE_RATE)
        if self.free_encoders:
            self.codec = None
            _free(codec)
        return wavs[0]

    def render(self, prompt: str, lyrics: str = "", duration: float = 30.0, seed: int = 0,
               settings: SamplerSettings = SamplerSettings(), use_erg_tag: bool = True) -> torch.Tensor:
        """One song: (2, output_samples(duration)) float32 CPU waveform at `SAMPLE_RATE` (48 kHz).

        Args:
            prompt: the caption / tags, as the model was trained on them.
            lyrics: lyric text with `[verse]`-style structure lines; "" for an instrumental.
            duration: seconds (>= 0.093); the output is at most one latent frame shorter (module docstring).
            seed: the noise seed; the same seed, settings and weights give the same song on any device.
            settings: steps, guidance (APG/CFG, scale, interval, decay, minimum), omega, ERG flags.
            use_erg_tag: damp UMT5 blocks 8-9 for the ERG unconditional text (reference default on).
        """
        latents = self.sample(prompt, lyrics, duration, seed, settings, use_erg_tag)
        return self.decode(latents)
