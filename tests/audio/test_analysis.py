"""acetune.audio.analysis: BS.1770 loudness against the standard's sine reference, normalisation, and the
BPM/key accuracy goals on a fast subset of benchmarks/bpm_key_accuracy.py."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acetune.audio.analysis import (
    SongAnalysis,
    estimate_bpm,
    estimate_key,
    integrated_loudness,
    normalize_loudness,
)

REPO = Path(__file__).resolve().parents[2]

SR = 48000


def _bench():
    spec = importlib.util.spec_from_file_location("bpm_key_accuracy", REPO / "benchmarks" / "bpm_key_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _sine(amplitude: float, seconds: float = 5.0, channels: int = 2) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return (amplitude * torch.sin(2 * math.pi * 997 * t)).expand(channels, -1).clone()


def test_loudness_of_reference_sine():
    # BS.1770: a 997 Hz sine at 0 dBFS in one channel reads -3.01 LKFS; two channels add 3.01 dB.
    assert integrated_loudness(_sine(0.1), SR) == pytest.approx(-20.0, abs=0.05)
    assert integrated_loudness(_sine(0.1, channels=1), SR) == pytest.approx(-23.01, abs=0.05)
    assert integrated_loudness(torch.zeros(2, SR), SR) == -math.inf
    assert integrated_loudness(_sine(0.1, seconds=0.2), SR) == -math.inf  # under one 400 ms block


def test_normalize_loudness_hits_target_and_keeps_shape():
    rng = np.random.default_rng(0)
    wav = torch.from_numpy(rng.standard_normal((2, SR * 4)).astype(np.float32) * 0.02)
    out = normalize_loudness(wav, SR, -14.0)
    assert out.shape == wav.shape and out.dtype == wav.dtype
    assert integrated_loudness(out, SR) == pytest.approx(-14.0, abs=0.05)
    assert float(out.abs().max()) <= 1.0


def test_normalize_loudness_never_clips_and_leaves_silence():
    wav = _sine(0.001)
    wav[:, 1000] = 0.9  # one spike: the full gain would push it far past full scale
    out = normalize_loudness(wav, SR, -14.0)
    assert float(out.abs().max()) == pytest.approx(1.0, abs=1e-6)
    assert integrated_loudness(out, SR) < -14.0
    silent = torch.zeros(2, SR)
    assert torch.equal(normalize_loudness(silent, SR, -14.0), silent)


def test_silence_gives_no_bpm_or_key():
    assert estimate_bpm(np.zeros(SR * 3, np.float32), SR) is None
    assert estimate_key(np.zeros(SR * 3, np.float32), SR) == (None, 0.0)
    meta = SongAnalysis(bpm=None, keyscale=None, key_confidence=0.0, lufs=-math.inf, duration=3.0).meta()
    assert meta == {}
    assert SongAnalysis(bpm=119.6, keyscale="A minor", key_confidence=0.8, lufs=-9.0, duration=3).meta() == \
        {"bpm": 120, "keyscale": "A minor"}


def test_bpm_key_accuracy_goals_on_subset():
    bench = _bench()
    r = bench.evaluate(bench.make_cases(24, 20.0, seed=0))  # all 24 keys once, 60-180 BPM
    print({k: v for k, v in r.items() if k != "failures"})
    assert r["tempo_hit_or_octave"] >= bench.GOAL_TEMPO, r["failures"]
    assert r["key_exact"] >= bench.GOAL_KEY, r["failures"]


def test_demo_songs_come_out_as_generated():
    """The demo's clips (what `acetune demo` and `caption --no-tags` analyse) at the demo's lengths:
    the lofi clip is 80 BPM A minor (it used to read 160 BPM F major), every key is exact."""
    bench = _bench()
    for name, y, sr, bpm, key in bench.demo_clips(seconds=(5.0,)):
        assert bench.tempo_verdict(estimate_bpm(y, sr), bpm) == "hit", name
        assert estimate_key(y, sr)[0] == key, name


def test_silence_at_the_ends_changes_nothing():
    bench = _bench()
    name, y, sr, bpm, key = bench.demo_clips(seconds=(5.0,))[0]
    padded = np.concatenate([np.zeros(2 * sr, np.float32), y, np.zeros(2 * sr, np.float32)])
    assert bench.tempo_verdict(estimate_bpm(padded, sr), bpm) == "hit" and estimate_key(padded, sr)[0] == key


def test_key_verdicts():
    bench = _bench()
    assert bench.key_verdict("C major", "A minor") == "relative" == bench.key_verdict("A minor", "C major")
    assert bench.key_verdict("A major", "A minor") == "parallel"
    assert bench.key_verdict("F major", "C major") == "fifth" and bench.key_verdict("Eb major", "C major") == "other"
