"""Numbers the README and docs/ state that no other test pins (each names the page that says it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from acetune.lora.file import peft_scale
from acetune.models.v1.dcae import DCAE_WINDOW, ENCODE_WINDOW
from acetune.models.v1.pipeline import output_samples
from acetune.models.v1.sampler import latent_frames

LATENT_FRAME_S = 4096 / 44100


def test_readme_unbaked_lora_is_8x_too_strong_in_comfyui():
    """README "Loading the LoRA in ComfyUI": the default config (r 64, alpha 1, rsLoRA) trains at scale 1/8."""
    cfg = json.loads((Path(__file__).resolve().parents[1] / "config" / "lora_config_transformer_only.json").read_text())
    assert 1.0 / peft_scale(cfg["lora_alpha"], cfg["r"], cfg["use_rslora"]) == pytest.approx(8.0)


def test_generate_length_rule():
    """docs/generate.md "Length": one latent frame is 92.9 ms; 30 s gives 29.91 s; at least 0.093 s."""
    assert round(LATENT_FRAME_S * 1000, 1) == 92.9
    assert round(output_samples(30.0) / 48000, 2) == 29.91
    assert latent_frames(0.093) == 1 and latent_frames(0.092) == 0


def test_window_lengths_in_seconds():
    """docs/train.md and docs/preprocess.md (songs longer than 47.5 s are encoded in windows), docs/generate.md."""
    assert ENCODE_WINDOW == DCAE_WINDOW
    assert round(DCAE_WINDOW * LATENT_FRAME_S, 1) == 47.6 and DCAE_WINDOW * LATENT_FRAME_S > 47.5


def test_train_memory_table_parameter_counts(golden):
    """docs/train.md "Memory": parameters freed, from the official manifest (2 bytes each in bf16)."""
    keys = json.loads((golden / "v1_full_manifest.json").read_text())["models"]["ace_step_transformer"]["keys"]

    def count(*prefixes, inside=()):
        return sum(math.prod(v["shape"]) for k, v in keys.items() if v["kind"] == "parameter"
                   and (k.startswith(prefixes) if prefixes else any(s in k for s in inside)))

    add = count(inside=(".cross_attn.add_", ".cross_attn.to_add_out"))
    lyric = count("lyric_embs", "lyric_encoder", "lyric_proj")
    projectors = count("projectors")
    assert (round(add / 1e9, 2), round(add * 2 / 1e9, 2)) == (0.63, 1.26)
    assert (round(lyric / 1e6), round(lyric * 2 / 1e9, 2)) == (92, 0.18)
    assert (round(projectors / 1e6), round(projectors * 2 / 1e9, 2)) == (88, 0.18)


def test_index_lists_every_audio_extension():
    """docs/index.md and docs/build-dataset.md name the audio files build-dataset reads."""
    from acetune.audio.io import AUDIO_EXTENSIONS

    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in ("index.md", "build-dataset.md"):
        text = (docs / page).read_text(encoding="utf-8")
        assert all(f"{ext} " in text or f"{ext}`" in text for ext in AUDIO_EXTENSIONS), page
