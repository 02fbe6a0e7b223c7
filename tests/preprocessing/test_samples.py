"""Prompt variants, windows, sample keys and speaker embeddings of the preprocess stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from acetune.errors import InputError
from acetune.preprocessing.samples import (
    load_speaker_embedding,
    plan_windows,
    prompt_variants,
    sample_key,
    song_key_of,
    song_rng,
)


def test_prompt_variants_deterministic_per_key():
    tags = ["rock", "pop", "female vocals", "120 bpm"]
    a = prompt_variants(tags, {}, 4, song_rng("song1", 0))
    assert a == prompt_variants(tags, {}, 4, song_rng("song1", 0))
    assert a != prompt_variants(tags, {}, 4, song_rng("song2", 0))
    assert all(sorted(p.split(", ")) == sorted(tags) for p in a) and len(set(a)) == 4
    with_recap = prompt_variants(tags, {"short": "a rock song"}, 4, song_rng("song1", 0))
    assert len(with_recap) == 2 and with_recap[-1] == "a rock song"  # one tag order + the recaption


def test_prompt_variants_edge_cases():
    rng = song_rng("k", 0)
    assert prompt_variants([], {}, 4, rng) == ["music"]  # reference: no tags -> ["music"]
    assert prompt_variants(["solo"], {"x": "", "y": "calm piano"}, 4, rng) == ["solo", "calm piano"]
    many = {f"r{i}": f"caption {i}" for i in range(6)}
    out = prompt_variants(["a", "b"], many, 4, rng)
    assert len(out) == 4 and out[1:] == ["caption 0", "caption 1", "caption 2"]  # one tag order always kept
    assert len(prompt_variants(["a", "b"], {}, 4, rng)) == 2  # only 2 distinct orders exist


@pytest.mark.parametrize("n_recaptions", [0, 1, 2, 3])
def test_prompt_draw_frequency_matches_upstream(n_recaptions):
    """Upstream picks the tag string or one recaption uniformly (1/(R+1) each); the trainer's uniform draw
    over the stored variants (`make_batch`) must give the same shares."""
    import random

    from acetune.training.data import Sample, make_batch

    tags = ["rock", "pop", "piano"]
    recaps = {f"r{i}": f"caption {i}" for i in range(n_recaptions)}
    variants = prompt_variants(tags, recaps, 4, song_rng("song", 0))
    k = len(variants)
    sample = Sample(key="song", latents=torch.zeros(8, 16, 2), text_embeds=torch.arange(k).float()[:, None, None],
                    text_mask=torch.ones(k, 1), lyric_ids=torch.zeros(1, dtype=torch.int64), lyric_mask=torch.zeros(1),
                    speaker=torch.zeros(512))
    random.seed(0)
    draws = 6000
    picked = [variants[int(make_batch([sample])["encoder_text_hidden_states"][0, 0, 0])] for _ in range(draws)]
    is_recap = [p in recaps.values() for p in picked]
    expected = n_recaptions / (n_recaptions + 1)
    sigma = (expected * (1 - expected) / draws) ** 0.5
    assert abs(sum(is_recap) / draws - expected) <= 4 * sigma + 1e-12
    for text in recaps.values():  # and every recaption equally often
        share = picked.count(text) / draws
        assert abs(share - 1 / (n_recaptions + 1)) <= 4 * ((1 / (n_recaptions + 1)) * (1 - 1 / (n_recaptions + 1)) / draws) ** 0.5


def test_windows_cover_the_song_with_full_length_windows():
    assert plan_windows(100, 200, 10) == [(0, 100)]
    w = plan_windows(1000, 300, 50)
    assert w[0] == (0, 300) and w[-1] == (700, 1000) and all(b - a == 300 for a, b in w)
    assert all(w[i + 1][0] - w[i][0] <= 250 for i in range(len(w) - 1))


def test_sample_keys_round_trip():
    for key in ("song", "a#w1", "x/y"):
        for n in (0, 1, 12):
            assert song_key_of(sample_key(key, n), n) == key
    assert sample_key("song", 0) == "song"


def test_speaker_embedding_formats(tmp_path):
    v = torch.randn(512)
    save_file({"emb": v}, tmp_path / "s.safetensors")
    np.save(tmp_path / "s.npy", v.numpy())
    torch.save(v, tmp_path / "s.pt")
    for name in ("s.safetensors", "s.npy", "s.pt"):
        assert torch.equal(load_speaker_embedding(str(tmp_path / name)), v)
    torch.save(torch.randn(10), tmp_path / "bad.pt")
    with pytest.raises(InputError, match="512"):
        load_speaker_embedding(str(tmp_path / "bad.pt"))
    with pytest.raises(InputError, match="not found"):
        load_speaker_embedding(str(tmp_path / "missing.pt"))
