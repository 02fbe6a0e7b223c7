"""Validation audio during training: the same prompts, the same seeds, rendered every N steps.

The trainer calls `render_validation` at step 0 (before any update, kept for comparison) and then
whenever `spec.due(step)`. Each call writes, next to the checkpoints:

    <out_dir>/validation/step-000123/0.wav, 0.png, 1.wav, 1.png, ..., prompts.json

and logs every render as audio (`validation/<i>`) and its log-mel spectrogram as an image
(`validation/<i>_mel`) through the run's `MetricsLogger` (TensorBoard, Wandb or none).

Prompt i is always rendered with seed `spec.seed + i` and rendered alone (the sampler couples the
items of a batch through APG and the Euler mean), so two folders differ only by the LoRA's training.
The global RNG is left as it was, so a run with validation resumes exactly like one without.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from acetune.audio.io import audio_write
from acetune.errors import UsageError
from acetune.models.v1.mel import LogMelSpectrogram
from acetune.models.v1.pipeline import MIN_DURATION, SAMPLE_RATE, V1Generator
from acetune.models.v1.sampler import SamplerSettings
from acetune.training.checkpoint import checkpoint_name

logger = logging.getLogger(__name__)
_log = logger  # render_validation's `logger` argument (the metrics logger) shadows the name

VALIDATION_DIR = "validation"
PROMPTS_FILE = "prompts.json"


@dataclass
class ValidationSpec:
    """What to render. `lyrics` is one text for every prompt or one per prompt ("" = instrumental).

    Args:
        prompts: captions to render (at least one).
        lyrics: a string, or a list as long as `prompts`.
        duration: seconds per render.
        seed: prompt i uses seed + i.
        every: render every this many optimizer steps (0: only at step 0).
        settings: sampler settings (default: the reference's, 60 steps).
    """

    prompts: Sequence[str]
    lyrics: str | Sequence[str] = ""
    duration: float = 30.0
    seed: int = 42
    every: int = 0
    settings: SamplerSettings = field(default_factory=SamplerSettings)

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        self.prompts = list(self.prompts)
        lyrics = [self.lyrics] * len(self.prompts) if isinstance(self.lyrics, str) else list(self.lyrics)
        problems = []
        if not self.prompts:
            problems.append("--validation_prompt is empty")
        if len(lyrics) != len(self.prompts):
            problems.append(f"{len(lyrics)} --validation_lyrics for {len(self.prompts)} --validation_prompt; "
                            "give one for all or one per prompt")
        if not (MIN_DURATION <= self.duration < float("inf")):
            problems.append(f"--validation_duration must be at least {MIN_DURATION:.3f} s (got {self.duration})")
        if self.every < 0:
            problems.append(f"--validation_every must be >= 0 (got {self.every})")
        if problems:
            raise UsageError("; ".join(problems))
        self.lyrics = lyrics

    def due(self, step: int) -> bool:
        """True at step 0 and every `every` steps after it."""
        return step == 0 or (self.every > 0 and step % self.every == 0)


def validation_dir(out_dir: str | Path, step: int) -> Path:
    """`<out_dir>/validation/step-000123`."""
    return Path(out_dir) / VALIDATION_DIR / checkpoint_name(step)


# ---- spectrogram image ----

_MEL = None


def log_mel(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(C, T) waveform -> (128, T // 512) natural-log mel of the mono mix (the vocoder's mel settings)."""
    global _MEL
    if _MEL is None or _MEL[0] != sample_rate:
        _MEL = (sample_rate, LogMelSpectrogram(sample_rate=sample_rate))
    return _MEL[1](wav.float().cpu().mean(dim=0))


def mel_image(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The log-mel spectrogram as an (H, W, 3) uint8 picture (time on x in seconds, mel bins on y).

    Uses matplotlib (Agg, no pyplot state); without matplotlib, a grey-scale image of the same data.
    """
    mel = log_mel(wav, sample_rate).numpy()
    seconds = wav.shape[-1] / sample_rate
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        lo, hi = float(mel.min()), float(mel.max())
        grey = ((mel[::-1] - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    fig = Figure(figsize=(8, 3), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, mel.shape[0]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    fig.colorbar(image, ax=ax, label="log magnitude")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _save_png(path: Path, image: np.ndarray) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    Image.fromarray(image).save(path)


# ---- rendering ----

def _generator(generator_or_parts):
    if hasattr(generator_or_parts, "render"):  # a V1Generator or a family's renderer
        return generator_or_parts
    if isinstance(generator_or_parts, Mapping):
        # the trainer's parts: its transformer + checkpoint_dir (+ its family, whose hook builds the renderer);
        # encoders loaded per render and freed
        parts = dict(generator_or_parts)
        family = parts.pop("family", None)
        if family is not None and hasattr(family, "validation_renderer"):
            return family.validation_renderer(parts.pop("transformer"), parts.pop("checkpoint_dir"), **parts)
        return V1Generator(**{"free_encoders": True, **parts})
    raise TypeError("render_validation needs a V1Generator or a mapping of V1Generator arguments")


def render_validation(generator_or_parts, spec: ValidationSpec, step: int, out_dir: str | Path,
                      logger=None) -> list[Path]:
    """Render every validation prompt, save it under `validation_dir(out_dir, step)`, log audio + mel.

    Args:
        generator_or_parts: a `V1Generator` (or any object with `render` and `sample_rate`), a mapping with
            `family`, `transformer`, `checkpoint_dir` (the family's `validation_renderer` builds the renderer),
            or a mapping of `V1Generator` arguments, e.g.
            `{"transformer": model_with_peft_adapter, "checkpoint_dir": ckpt}` (UMT5 and the codec are
            then loaded for the render and freed right after: `free_encoders=True`).
        spec: prompts, lyrics, duration, seed, settings.
        step: the optimizer step (0 = before training).
        out_dir: the run's output folder (the one holding the `step-NNNNNN/` checkpoints).
        logger: a `acetune.training.loggers.MetricsLogger` (`log_audio(name, wav, sr, step)`,
            `log_image(name, array_hwc_uint8, step)`), or None.
    Returns:
        the written .wav paths, in prompt order.
    """
    generator = _generator(generator_or_parts)
    rate = getattr(generator, "sample_rate", SAMPLE_RATE)
    folder = validation_dir(out_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    written, records = [], []
    with torch.random.fork_rng(devices=devices):
        for i, (prompt, lyrics) in enumerate(zip(spec.prompts, spec.lyrics)):
            seed = spec.seed + i
            wav = generator.render(prompt, lyrics, spec.duration, seed, spec.settings)
            path = audio_write(folder / f"{i}.wav", wav, rate)
            image = mel_image(wav, rate)
            _save_png(folder / f"{i}.png", image)
            if logger is not None:
                logger.log_audio(f"validation/{i}", wav, rate, step)
                logger.log_image(f"validation/{i}_mel", image, step)
            written.append(path)
            records.append({"index": i, "file": path.name, "prompt": prompt, "lyrics": lyrics, "seed": seed,
                            "duration": spec.duration, "samples": int(wav.shape[-1])})
    (folder / PROMPTS_FILE).write_text(json.dumps({"step": step, "sample_rate": rate, "renders": records},
                                                  indent=2, ensure_ascii=False), encoding="utf-8")
    _log.info("validation step %d: %d render(s) in %s", step, len(written), folder)
    return written
