"""Validation renders: written at step 0 and every N steps, valid 48 kHz stereo, in the TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acetune.errors import UsageError
from acetune.models.v1.family import FAMILY
from acetune.models.v1.pipeline import SAMPLE_RATE, output_samples
from acetune.models.v1.sampler import SamplerSettings
from acetune.models.v1.tiny import save_tiny_checkpoint
from acetune.training.loggers import build_logger
from acetune.training.lora import add_lora
from acetune.training.validation import ValidationSpec, mel_image, render_validation, validation_dir

DURATION = 1.5  # 16 latent frames -> ceil(16·4096·48000/44100) = 71_332 samples


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", lyric_vocab=golden / "lyrics" / "vocab.json")


def test_renders_at_configured_steps_and_in_tensorboard(ckpt, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # the trainer's state: its transformer with a peft adapter, in train mode
    model = FAMILY.load_transformer(ckpt)
    add_lora(model, {"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_v"], "lora_dropout": 0.5})
    model.train()
    spec = ValidationSpec(prompts=["pop, rock, upbeat", "ambient piano, slow"], lyrics=["[verse]\nhello there", ""],
                          duration=DURATION, seed=5, every=2, settings=SamplerSettings(infer_steps=3))
    rng_before = torch.get_rng_state()
    with build_logger("tensorboard", tmp_path / "logs") as log:
        for step in range(5):
            if spec.due(step):
                render_validation({"transformer": model, "checkpoint_dir": ckpt}, spec, step, tmp_path, log)
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)

    steps = sorted(p.name for p in (tmp_path / "validation").iterdir())
    assert steps == ["step-000000", "step-000002", "step-000004"]
    for name in steps:
        folder = tmp_path / "validation" / name
        for i in range(2):
            info = sf.info(str(folder / f"{i}.wav"))
            assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 2, output_samples(DURATION))
            assert 0 <= DURATION - info.frames / SAMPLE_RATE < 4096 / 44100
            assert (folder / f"{i}.png").is_file()
        renders = json.loads((folder / "prompts.json").read_text())["renders"]
        assert [(r["prompt"], r["seed"]) for r in renders] == [("pop, rock, upbeat", 5), ("ambient piano, slow", 6)]

    # the LoRA is untrained (B = 0), so every step renders the same song: the seed is fixed
    first, last = (sf.read(str(validation_dir(tmp_path, s) / "0.wav"))[0] for s in (0, 4))
    assert np.array_equal(first, last)

    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    for i in range(2):
        audio = events.Audio(f"validation/{i}")
        assert [a.step for a in audio] == [0, 2, 4]
        assert {(a.sample_rate, a.length_frames) for a in audio} == {(SAMPLE_RATE, output_samples(DURATION))}
        assert [im.step for im in events.Images(f"validation/{i}_mel")] == [0, 2, 4]


def test_a_loaded_generator_is_accepted(ckpt, tmp_path):
    from acetune.models.v1.pipeline import V1Generator

    gen = V1Generator.from_pretrained(ckpt, device="cpu")
    spec = ValidationSpec(prompts="lofi, chill", duration=DURATION, settings=SamplerSettings(infer_steps=2))
    (path,) = render_validation(gen, spec, 10, tmp_path)
    assert path == tmp_path / "validation" / "step-000010" / "0.wav"
    assert gen.text_encoder is not None and gen.codec is not None  # kept loaded for the next call


def test_spec_checks_and_schedule():
    spec = ValidationSpec(prompts=["a", "b"], lyrics="la", every=3)
    assert spec.lyrics == ["la", "la"]
    assert [s for s in range(10) if spec.due(s)] == [0, 3, 6, 9]
    assert [s for s in range(5) if ValidationSpec(prompts=["a"]).due(s)] == [0]
    with pytest.raises(UsageError, match="2 --validation_lyrics for 3 --validation_prompt"):
        ValidationSpec(prompts=["a", "b", "c"], lyrics=["x", "y"])
    with pytest.raises(UsageError, match="--validation_duration"):
        ValidationSpec(prompts=["a"], duration=0.0)


def test_mel_image_is_hwc_uint8():
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    wav = torch.stack([torch.sin(2 * torch.pi * 440 * t)] * 2) * 0.5
    image = mel_image(wav)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
