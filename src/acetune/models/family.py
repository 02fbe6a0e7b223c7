"""The model-family interface: what preprocess, train and generate need from a model family.

A family (ACE-Step v1 now, ACE-Step 1.5 later) is one object implementing `ModelFamily`, found
by name with `get_family(name)` or from a checkpoint folder with `detect_family(dir)`. Stages talk
to the family, never to `models/v1/...` directly, so a second family is one new module plus one
line in `_FAMILY_MODULES`. The trainer talks to a family through the two training hooks below.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from acetune.errors import CheckpointError, UsageError

# name -> module defining `FAMILY` (imported lazily: a family may pull in heavy dependencies)
_FAMILY_MODULES: dict[str, str] = {
    "ace-step-v1": "acetune.models.v1.family",
    "acestep15": "acetune.models.v15.family",
}


@runtime_checkable
class ModelFamily(Protocol):
    """What the pipeline needs from one model family."""

    name: str
    """Registry name, e.g. "ace-step-v1"; written into datasets and LoRA metadata."""

    default_lora_targets: tuple[str, ...]
    """Module-name suffixes a LoRA adapts by default (peft `target_modules`)."""

    def detect(self, checkpoint_dir: Path) -> bool:
        """True if `checkpoint_dir` looks like a checkpoint of this family (cheap: file names, config keys)."""

    def check_checkpoint(self, checkpoint_dir: Path, components: tuple[str, ...] | None = None) -> None:
        """Raise `CheckpointError` naming the first missing or malformed file; read no weights.

        `components`: the folders whose weights must be present (None: all); a stage that reads fewer
        passes `acetune.hub.stage_components(family, stage)`, which is also what it downloads."""

    def load_transformer(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", drop_unused: bool = False) -> torch.nn.Module:
        """The denoiser, in eval mode. `drop_unused` frees weights the forward never reads (training)."""

    def config_hash(self, checkpoint_dir: Path) -> str:
        """Stable hash of the transformer config; cached features record it to detect a model change."""

    # ---- training hooks (used by `acetune.training.loop.fit`) ----

    def prepare_for_training(self, model: torch.nn.Module, *, use_ssl: bool, drop_lyric_path: bool = False
                             ) -> dict[str, int]:
        """Free weights this training run never reads; returns {what was freed: parameter count}.

        `use_ssl` False: the SSL projection heads go. `drop_lyric_path` True: the lyric encoder goes
        (its output is cached per sample; only when nothing trainable is in it and no validation
        render needs it).
        """

    def training_loss(self, model: torch.nn.Module, batch: dict, *, shift: float, ssl_coeff: float,
                      noise: torch.Tensor | None = None, u: torch.Tensor | None = None):
        """One training step's loss terms (an object with `.loss`, `.denoising_loss`, `.proj_losses`
        dict and `.log_values()`, e.g. `models.v1.flow.FlowLoss`).

        `batch` is already on the model's device and dtype. `noise` / `u` (the logit-normal draw)
        replace the random draws, for parity tests; otherwise they come from the global torch RNG.
        """

    def validation_renderer(self, transformer: torch.nn.Module, checkpoint_dir: Path, **options):
        """What renders validation clips during training with the in-training `transformer` (adapter active):
        an object with `.sample_rate` and `.render(prompt, lyrics, duration, seed, settings) -> (2, N)` float32
        CPU audio. Built per validation point; encoders it loads are freed with it."""

    # ---- preprocess hooks (acetune.stages.preprocess) ----

    sample_rate: int
    """Rate of the stereo audio the codec encodes (v1: 48000)."""

    def load_codec(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
        """Audio encoder with `encode(audios (N, 2, T), audio_lengths (N,)) -> (latents, latent_lengths)`."""

    def load_text_encoder(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu"):
        """Prompt encoder with `.model` (a torch module) and `encode(texts, path="dataset") -> (hidden (N, T, D),
        attention mask (N, T))`, the training-data tokenisation."""

    def load_lyric_tokenizer(self, checkpoint_dir: Path, vocab: Path | None = None):
        """Lyric tokenizer with `tokenize_dataset_checked(text, song) -> LyricTokens(ids | None, language, warnings)`."""

    def encoder_config_hash(self, checkpoint_dir: Path) -> str:
        """Stable hash of the configs of every encoder preprocess runs (cached features depend on them)."""

    def speaker_dim(self, checkpoint_dir: Path) -> int:
        """Width of the speaker embedding the transformer takes (preprocess stores zeros of it by default)."""


def family_names() -> list[str]:
    return sorted(_FAMILY_MODULES)


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`; `CheckpointError` listing the known names otherwise."""
    if name not in _FAMILY_MODULES:
        raise CheckpointError(f"unknown model family {name!r}", fix=f"choose one of: {', '.join(family_names())}")
    return importlib.import_module(_FAMILY_MODULES[name]).FAMILY


def detect_family(checkpoint_dir: str | Path) -> ModelFamily:
    """The family whose `detect` accepts `checkpoint_dir`, or a `CheckpointError` saying none does."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError("checkpoint folder not found", path=checkpoint_dir,
                              fix="pass the folder holding the model's component folders")
    for name in family_names():
        family = get_family(name)
        if family.detect(checkpoint_dir):
            return family
    raise CheckpointError("not a checkpoint of any supported model family", path=checkpoint_dir,
                          fix=f"supported: {', '.join(family_names())}; pass the folder that holds "
                              "ace_step_transformer/, music_dcae_f8c8/, music_vocoder/ and umt5-base/")


def check_family(checkpoint_dir: str | Path, wanted: ModelFamily, flag: str = "--model_family") -> None:
    """UsageError when `checkpoint_dir` is a complete-enough checkpoint of another family than `wanted`
    (an ACE-Step 1.5 folder given to a v1 stage must not read as "download the complete v1")."""
    try:
        found = detect_family(checkpoint_dir)
    except CheckpointError:
        return  # not recognisable at all: the family's own check names what is missing
    if found.name != wanted.name:
        raise UsageError(f"this is an {found.name} checkpoint, not {wanted.name}", path=checkpoint_dir,
                         fix=f"add {flag} {found.name} (or pass an {wanted.name} checkpoint folder)")
