"""Objective audio scores with CLAP: did the LoRA move the renders toward the training songs?

CLAP (`transformers.ClapModel`, e.g. `laion/clap-htsat-unfused`) maps audio and text into one space of
unit vectors. From those embeddings (all cosines are dot products of unit vectors):

- prompt adherence: cos(render_i, text(prompt_i)), mean over renders;
- style match: cos(render_i, m) with m the normalised mean embedding of the training songs, mean over renders;
- Fréchet distance between the render and training-song embeddings (Gaussian fit of each set, as FAD),
  reported only when both sets hold at least `FRECHET_MIN` embeddings;
- LoRA effect: the same scores for the same prompts and seeds rendered without the LoRA; the difference
  in style match is what the LoRA did (`lora_effect_warning` below a threshold).

Audio is mixed to mono and resampled to CLAP's rate with `acetune.audio.resample`, then cut into
consecutive windows of CLAP's `max_length_s` (the last one zero-free: CLAP's own repeat-padding); a
file's embedding is the normalised mean of its windows. Giving CLAP exactly one window per call avoids
its random crop of longer inputs, so every score is deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acetune.audio.resample import resample
from acetune.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_CLAP = "laion/clap-htsat-unfused"
FRECHET_MIN = 8  # fewer embeddings per set: no Fréchet distance (the covariance would be mostly noise)
EFFECT_THRESHOLD = 0.01  # |style match with LoRA - without| below this: the LoRA barely changed the style
MIN_WINDOW_S = 1.0  # a trailing window shorter than this is dropped (unless it is the whole clip)

LORA_EFFECT_CAUSES = ("strength too low (try the --strengths sweep)", "rank/alpha too small for the learning rate "
                      "(alpha/r scales every update)", "too few steps (the validation loss still falls)",
                      "target modules that do not carry the style (the default attention projections usually do)")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1)


def _pooled(output) -> torch.Tensor:
    """transformers 4 returns the projected features, 5 a model output holding them in `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapScorer:
    """A CLAP model and its processor, loaded from a local folder or a Hub id (`from_pretrained`)."""

    def __init__(self, name_or_path: str = DEFAULT_CLAP, device: str | torch.device = "cpu",
                 revision: str | None = None):
        from transformers import ClapModel, ClapProcessor

        try:
            self.model = ClapModel.from_pretrained(name_or_path, revision=revision).to(device).eval()
            self.processor = ClapProcessor.from_pretrained(name_or_path, revision=revision)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"cannot load the CLAP model {name_or_path!r} ({first})",
                                  fix="pass --clap_model a folder saved with save_pretrained or a Hub id such as "
                                      f"{DEFAULT_CLAP} (online once, or HF_HUB_OFFLINE=1 with a filled cache)"
                                  ) from err
        self.device = torch.device(device)
        extractor = self.processor.feature_extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.window = int(round(extractor.nb_max_samples if hasattr(extractor, "nb_max_samples")
                                else extractor.max_length_s * self.sample_rate))

    def windows(self, wav: torch.Tensor, rate: int) -> list[np.ndarray]:
        """(C, T) or (T,) audio at `rate` -> mono windows at CLAP's rate, each at most `self.window` long."""
        mono = wav.double().mean(dim=0) if wav.ndim == 2 else wav.double()
        mono = resample(mono.float(), int(rate), self.sample_rate).numpy().astype(np.float32)
        pieces = [mono[i:i + self.window] for i in range(0, max(1, len(mono)), self.window)]
        keep = [p for p in pieces if len(p) >= MIN_WINDOW_S * self.sample_rate]
        return keep or pieces[:1]

    @torch.no_grad()
    def embed_audio(self, clips: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """One unit embedding (float64) per (audio, rate) clip: the normalised mean over its windows."""
        out = []
        for wav, rate in clips:
            feats = self.processor.feature_extractor(self.windows(wav, rate), sampling_rate=self.sample_rate,
                                                     return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "is_longer")}
            emb = _unit(_pooled(self.model.get_audio_features(**inputs)).cpu())
            out.append(_unit(emb.mean(dim=0)))
        return torch.stack(out)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """One unit embedding (float64) per text."""
        tokens = self.processor.tokenizer(list(texts), padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _unit(_pooled(self.model.get_text_features(**inputs)).cpu())


# ---- the numbers (pure functions of embeddings) ----

def prompt_adherence(render_emb: torch.Tensor, prompt_emb: torch.Tensor) -> float:
    """Mean cosine of each render to its own prompt (rows paired)."""
    return float((_unit(render_emb) * _unit(prompt_emb)).sum(dim=-1).mean())


def style_match(render_emb: torch.Tensor, reference_emb: torch.Tensor) -> float:
    """Mean cosine of each render to the normalised mean embedding of the reference (training) songs."""
    centre = _unit(_unit(reference_emb).mean(dim=0))
    return float((_unit(render_emb) @ centre).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor, min_count: int = FRECHET_MIN) -> float | None:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) of the two embedding sets; None below `min_count`.

    The trace of the matrix square root is taken from the eigenvalues of C_a^1/2 C_b C_a^1/2 (symmetric,
    so numerically stable where C_a C_b is not).
    """
    if min(len(a), len(b)) < max(2, min_count):
        return None
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(ca)
    root_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cb @ root_a).clamp_min(0).sqrt().sum()
    return float(mu @ mu + ca.trace() + cb.trace() - 2 * cross)


@dataclass
class Scores:
    """CLAP scores of one set of renders (one checkpoint, one strength, or the base model)."""

    prompt: float
    style: float
    frechet: float | None = None

    def as_metrics(self, prefix: str = "val") -> dict[str, float]:
        out = {f"{prefix}/clap_prompt": self.prompt, f"{prefix}/style_cos": self.style}
        if self.frechet is not None:
            out[f"{prefix}/style_frechet"] = self.frechet
        return out


def score(render_emb: torch.Tensor, prompt_emb: torch.Tensor, reference_emb: torch.Tensor) -> Scores:
    return Scores(prompt_adherence(render_emb, prompt_emb), style_match(render_emb, reference_emb),
                  frechet_distance(render_emb, reference_emb))


def lora_effect_warning(with_lora: Scores, without: Scores, threshold: float = EFFECT_THRESHOLD) -> str | None:
    """A one-paragraph warning when the LoRA moved style match by less than `threshold`, else None."""
    change = with_lora.style - without.style
    if not math.isfinite(change) or abs(change) >= threshold:
        return None
    return (f"the LoRA changed style match by only {change:+.4f} (below {threshold}); usual causes: "
            + "; ".join(LORA_EFFECT_CAUSES))


def reference_clips(paths: list[Path]) -> list[tuple[torch.Tensor, int]]:
    """Decode training songs (any format acetune reads) at their own rate."""
    from acetune.audio.io import decode

    return [decode(p) for p in paths]
