"""CLAP scores on a tiny random ClapModel (Hub folder layout), checked against numbers computed here another way:
the model's own forward (`logits_per_audio / logit_scale` is the cosine) on tones synthesised directly at
CLAP's rate, numpy means, and scipy's matrix square root for the Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from acetune.errors import CheckpointError
from acetune.evaluation.clap import (
    ClapScorer,
    Scores,
    frechet_distance,
    lora_effect_warning,
    prompt_adherence,
    score,
    style_match,
)
from acetune.evaluation.tiny_clap import SAMPLE_RATE

PROMPTS = ["dark synthwave with female vocals", "jazz trio piano bass drums", "ambient pad drone"]


def _tone(freq: float, seconds: float, rate: int, harmonics: int = 3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return sum(0.3 / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, harmonics + 1)).astype(np.float32)


@pytest.fixture(scope="module")
def scorer(tiny_clap):
    return ClapScorer(str(tiny_clap))


def _direct(scorer, texts, mono_16k):
    """Unit text and audio embeddings from ClapModel.forward on processor outputs (no acetune code path)."""
    inputs = scorer.processor(text=texts, audio=mono_16k, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                              padding=True)
    with torch.no_grad():
        out = scorer.model(**inputs)
        cos = (out.logits_per_audio / scorer.model.logit_scale_a.exp()).double()  # (audio, text) cosines
    return out.text_embeds.double(), out.audio_embeds.double(), cos


def test_prompt_adherence_matches_the_models_own_similarity(scorer):
    freqs = (110.0, 220.0, 440.0)
    at_48k = [(torch.from_numpy(np.stack([_tone(f, 1.5, 48000)] * 2)), 48000) for f in freqs]  # stereo 48 kHz
    at_16k = [_tone(f, 1.5, SAMPLE_RATE) for f in freqs]  # the same tones made at CLAP's rate: no resampling
    renders, prompts = scorer.embed_audio(at_48k), scorer.embed_text(PROMPTS)
    _, audio_direct, cos = _direct(scorer, PROMPTS, at_16k)
    assert torch.allclose(renders, audio_direct, atol=2e-3)  # only the resampler differs
    expected = float(np.mean(np.diag(cos.numpy())))  # render i against prompt i
    assert prompt_adherence(renders, prompts) == pytest.approx(expected, abs=2e-3)
    assert torch.allclose(renders @ prompts.T, cos, atol=2e-3)
    assert torch.allclose(renders.norm(dim=-1), torch.ones(3, dtype=torch.float64))


def test_long_audio_is_the_mean_of_its_windows_and_deterministic(scorer):
    wav = np.concatenate([_tone(150.0, 2.0, SAMPLE_RATE), _tone(300.0, 2.0, SAMPLE_RATE),
                          _tone(600.0, 1.5, SAMPLE_RATE)])  # windows of 2 s: 2 + 2 + 1.5
    clip = (torch.from_numpy(wav), SAMPLE_RATE)
    first, second = scorer.embed_audio([clip]), scorer.embed_audio([clip])
    assert torch.equal(first, second)
    assert [len(w) for w in scorer.windows(torch.zeros(int(2.5 * SAMPLE_RATE)), SAMPLE_RATE)] == [32000]  # 0.5 s tail
    assert [len(w) for w in scorer.windows(torch.zeros(8000), SAMPLE_RATE)] == [8000]  # a short clip stays whole
    _, per_window, _ = _direct(scorer, ["x"], [wav[:32000], wav[32000:64000], wav[64000:]])
    mean = per_window.mean(dim=0)
    assert torch.allclose(first[0], mean / mean.norm(), atol=1e-6)


def test_style_match_and_frechet_against_numpy_and_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    reference = unit(torch.randn(12, 16, generator=g, dtype=torch.float64) + 2.0)
    renders = unit(torch.randn(10, 16, generator=g, dtype=torch.float64))
    centre = reference.numpy().mean(0)
    centre /= np.linalg.norm(centre)
    assert style_match(renders, reference) == pytest.approx(float((renders.numpy() @ centre).mean()), abs=1e-12)
    assert style_match(reference, reference) > style_match(renders, reference)

    a, b = renders.numpy(), reference.numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy_linalg.sqrtm(ca @ cb).real
    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))
    assert frechet_distance(renders, reference) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert frechet_distance(reference, reference) == pytest.approx(0.0, abs=1e-7)
    assert frechet_distance(renders[:3], reference) is None  # too few embeddings: not reported
    assert score(renders, renders, reference).frechet is not None and score(renders[:3], renders[:3], reference).frechet is None


def test_lora_effect_warning_threshold():
    base = Scores(prompt=0.3, style=0.50)
    assert lora_effect_warning(Scores(0.3, 0.505), base).startswith("the LoRA changed style match by only +0.0050")
    assert "strength" in lora_effect_warning(Scores(0.3, 0.495), base)
    assert lora_effect_warning(Scores(0.3, 0.55), base) is None
    assert lora_effect_warning(Scores(0.3, math.nan), base) is None
    assert Scores(0.1, 0.2, 3.0).as_metrics() == {"val/clap_prompt": 0.1, "val/style_cos": 0.2,
                                                  "val/style_frechet": 3.0}


def test_bad_clap_model_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as err:
        ClapScorer(str(tmp_path / "missing"))
    assert "\n" not in str(err.value) and "--clap_model" in str(err.value.fix)
