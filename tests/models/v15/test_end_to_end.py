"""ACE-Step 1.5 end to end on a tiny diffusers checkpoint in the official layout.

sidecars (.caption.txt/.lyrics.txt/.json) -> preprocess -> dataset row round trip -> LoRA overfit
(loss falls 10x) -> export (diffusers + ComfyUI layouts) -> `AceStepPipeline.load_lora_weights`
with every key used -> generate a 1 s clip. Runs in about 10 s on one CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.audio_fixtures import make_audio

from acetune.audio.io import audio_read
from acetune.dataset import schema
from acetune.dataset.sidecar_reader import find_sidecars
from acetune.dataset.song import SongRecord, split_tags
from acetune.errors import CheckpointError
from acetune.models.family import detect_family, get_family
from acetune.models.v15 import adapters
from acetune.models.v15.generate import load_lora_checked, load_pipeline
from acetune.models.v15.schema import FAMILY_NAME, decode, row
from acetune.models.v15.tiny import save_tiny_checkpoint_v15


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint_v15(tmp_path_factory.mktemp("v15") / "acestep-v15-tiny")


@pytest.fixture(scope="module")
def family():
    return get_family(FAMILY_NAME)


def _song_folder(folder: Path) -> SongRecord:
    """A song with the ACE-Step 1.5 sidecars, read the way build-dataset reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    audio, _ = make_audio(folder / "song.wav", seconds=2.0)
    (folder / "song.caption.txt").write_text("dark synthwave, female vocals", encoding="utf-8")
    (folder / "song.lyrics.txt").write_text("[verse]\nneon rain", encoding="utf-8")
    (folder / "song.json").write_text(json.dumps({"bpm": 118, "keyscale": "A minor", "timesignature": "4",
                                                  "language": "en"}), encoding="utf-8")
    found = find_sidecars(audio, {p.name for p in folder.iterdir()}, {})
    assert not found.errors and not found.conflicts
    return SongRecord(keys="song", filename=str(audio), tags=split_tags(found.caption), norm_lyrics=found.lyrics,
                      duration=2.0, bpm=float(found.meta["bpm"]), keyscale=found.meta["keyscale"],
                      timesignature=found.meta["timesignature"], language=found.meta["language"])


def test_detection_and_checks(checkpoint, family, tmp_path):
    assert detect_family(checkpoint).name == FAMILY_NAME
    family.check_checkpoint(checkpoint)
    assert len(family.config_hash(checkpoint)) == 16
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "AceStepPipeline"}), encoding="utf-8")
    assert family.detect(broken)
    with pytest.raises(CheckpointError, match="missing folder transformer"):
        family.check_checkpoint(broken)


def _preprocess(family, checkpoint, song: SongRecord):
    pipe = family.load_encoders(checkpoint)
    wav = audio_read(song.filename, pipe.sample_rate)
    return family.encode_song(pipe, wav, family.song_text(song), seed=0)


def test_preprocess_reads_sidecars_and_round_trips(checkpoint, family, tmp_path):
    from datasets import Dataset

    song = _song_folder(tmp_path / "songs")
    enc = _preprocess(family, checkpoint, song)
    assert enc.latents.shape == (8, 50)  # tiny latent width 8, 2 s at 25 Hz
    assert enc.encoder_states.ndim == 2 and enc.encoder_states.shape[1] == 32
    for fact in ("dark synthwave, female vocals", "- bpm: 118", "- keyscale: A minor", "- timesignature: 4",
                 "- duration: 2 seconds"):
        assert fact in enc.text_prompt
    assert enc.lyrics_prompt.startswith("# Languages\nen\n\n# Lyric\n[verse]\nneon rain")
    # 1.5 rows fit the shared schema's columns (models/v15/schema.py docstring) and decode back exactly
    r = row("song", song.filename, 0, 0, 0, 2.0, enc.latents, enc.encoder_states, enc.text_prompt,
            enc.lyrics_prompt, storage="float32")
    Dataset.from_list([r], features=schema.features(())).save_to_disk(str(tmp_path / "ds"))
    back = decode(Dataset.load_from_disk(str(tmp_path / "ds"))[0], "float32")
    assert torch.equal(back["latents"], enc.latents) and torch.equal(back["encoder_states"], enc.encoder_states)


def _train(family, checkpoint, enc, kind: str, steps: int, until: float | None = None):
    """Up to `steps` steps; with `until`, stop at the first loss below `until` x the first one."""
    transformer = family.load_transformer(checkpoint)
    # MLP too: the width-32 DiT cannot overfit 10x through its attention projections alone.
    config = family.adapter_config(kind, rank=8, alpha=8.0, targets=adapters.LORA_TARGETS + adapters.MLP_TARGETS)
    params = family.add_adapter(transformer, config)
    batch = family.collate([{"latents": enc.latents, "encoder_states": enc.encoder_states}])
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    # Overfit one fixed (noise, t) draw: the sanity check that gradients reach the adapter.
    noise = torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(1))
    u = torch.zeros(1)  # t = 0.75
    transformer.train()
    losses = []
    for _ in range(steps):
        out = family.training_loss(transformer, batch, noise=noise, u=u)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        if until is not None and losses[-1] < losses[0] * until:
            break
    return transformer.eval(), config, batch, losses


def test_train_export_load_generate(checkpoint, family, tmp_path):
    enc = _preprocess(family, checkpoint, _song_folder(tmp_path / "songs"))
    # at most 300 steps, stopping once the loss fell 10x: the steps after that only added time
    transformer, config, batch, losses = _train(family, checkpoint, enc, "lora", steps=300, until=0.1)
    assert losses[-1] < losses[0] / 10, f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps"

    lora_file = family.save_diffusers_lora(transformer, tmp_path / "lora", config)
    comfy_file = family.save_comfyui(family.adapter_state(transformer), tmp_path / "lora_comfyui.safetensors",
                                     config)
    from acetune.models.v15.objective import context_latents

    args = dict(hidden_states=torch.randn(1, 50, 8), timestep=torch.tensor([0.5]), timestep_r=torch.tensor([0.5]),
                encoder_hidden_states=batch["encoder_text_hidden_states"],
                context_latents=context_latents(transformer.acetune_silence_latent, 50)[None], return_dict=False)
    with torch.no_grad():
        want = transformer(**args)[0]

    pipe = load_pipeline(checkpoint)
    assert load_lora_checked(pipe, lora_file) == 2 * (4 * 2 + 3) * 2  # layers x (attn projections + MLP) x (A, B)
    with torch.no_grad():
        got = pipe.transformer(**args)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # The ComfyUI file: original 1.5 names, scale baked in, and ComfyUI's arithmetic gives peft's deltas.
    from safetensors.torch import load_file

    comfy = load_file(str(comfy_file))
    assert all(k.startswith("base_model.model.layers.") for k in comfy)
    assert any(".self_attn.o_proj.lora_A.weight" in k for k in comfy) and not any(".to_q." in k for k in comfy)
    modules = dict(transformer.named_modules())
    for name, delta in adapters.comfyui_deltas(comfy).items():
        peft_delta = modules[adapters.diffusers_name(name)].get_delta_weight("default")
        torch.testing.assert_close(delta, peft_delta, rtol=1e-5, atol=1e-7)

    audio = family.generate(pipe, "dark synthwave", lyrics="neon rain", duration=1.0, steps=2, seed=0)
    assert audio.shape == (2, 48000) and torch.isfinite(audio).all() and audio.abs().max() > 0


def test_lokr_exports_for_comfyui(checkpoint, family, tmp_path):
    enc = _preprocess(family, checkpoint, _song_folder(tmp_path / "songs"))
    transformer, config, batch, losses = _train(family, checkpoint, enc, "lokr", steps=30)
    assert losses[-1] < losses[0]
    state = family.adapter_state(transformer)
    assert state and all(".lokr_" in k for k in state)
    path = family.save_comfyui(state, tmp_path / "lokr_comfyui.safetensors", config)
    from safetensors.torch import load_file

    modules = dict(transformer.named_modules())
    deltas = adapters.comfyui_deltas(load_file(str(path)))
    assert len(deltas) == 2 * (4 * 2 + 3)
    for name, delta in deltas.items():
        peft_delta = modules[adapters.diffusers_name(name)].get_delta_weight("default")
        torch.testing.assert_close(delta, peft_delta, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="LoRA adapters only"):
        family.save_diffusers_lora(transformer, tmp_path / "x", config)
