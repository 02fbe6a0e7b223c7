"""preprocess end to end with tiny models: every column against direct encoder calls, bad songs, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import HubertModel

from acetune.audio.io import load_song
from acetune.audio.resample import resample
from acetune.cli import run_command
from acetune.dataset import schema
from acetune.models.v1.dcae import MusicDCAE
from acetune.models.v1.lyrics import LyricTokenizer
from acetune.models.v1.text_encoder import TextEncoder
from audio_fixtures import make_audio

LYRICS = "[verse]\nThe night is young and we are running\nUnder city lights we keep on singing"


def preprocess(*argv) -> int:
    return run_command("preprocess", [str(a) for a in argv])


def make_songs(folder: Path, n_extra: int = 0) -> Path:
    """Three songs (different rates/channels/sidecars) + `n_extra` plain ones; 1-3 s each."""
    folder.mkdir(parents=True, exist_ok=True)
    make_audio(folder / "alpha.wav", 2, 44100, 2.0, seed=1)
    (folder / "alpha_prompt.txt").write_text("rock, pop, female vocals", encoding="utf-8")
    (folder / "alpha_lyrics.txt").write_text(LYRICS, encoding="utf-8")
    make_audio(folder / "beta.flac", 1, 48000, 3.0, seed=2)
    (folder / "beta.json").write_text(json.dumps({"caption": "ambient piano, slow"}), encoding="utf-8")
    make_audio(folder / "gamma.wav", 2, 22050, 1.0, seed=3)  # shorter than 3 s: padded
    for i in range(n_extra):
        make_audio(folder / f"extra{i}.wav", 2, 48000, 1.5, seed=10 + i)
    return folder


def build(songs: Path, out: Path) -> Path:
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(out)]) == 0
    return out


@pytest.fixture
def dataset(tmp_path) -> Path:
    return build(make_songs(tmp_path / "songs"), tmp_path / "songs_filenames")


def rows_by_key(out: Path) -> dict[str, dict]:
    ds, _ = schema.load_dataset(out)
    keys = ds[schema.KEY]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return {r[schema.KEY]: r for r in ds}


def reference_ssl(model, wav: torch.Tensor, rate: int, chunk_s: int) -> torch.Tensor:
    """The fork's infer_*_ssl, written out independently for one clip."""
    mono = resample(wav.mean(0, keepdim=True), 48000, rate)
    n = wav.shape[-1] // (48000 // rate)
    mono = (mono - mono[:, :n].mean()) / torch.sqrt(mono[:, :n].var() + 1e-7)
    size = rate * chunk_s
    feats = []
    for start in range(0, n, size):
        end = min(start + size, n)
        chunk = F.pad(mono[:, start:end], (0, size - (end - start)))
        with torch.no_grad():
            feats.append(model(chunk).last_hidden_state[0, : (end - start + 319) // 320])
    return torch.cat(feats)


def test_every_column_matches_direct_encoder_calls(dataset, tmp_path, tiny_ckpt, ssl_dirs, capsys):
    out = tmp_path / "prep"
    mert, mhubert = ssl_dirs
    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                      "--mert_dir", mert, "--mhubert_dir", mhubert) == 0
    assert "MB per audio-second" in capsys.readouterr().out
    rows = rows_by_key(out)
    assert set(rows) == {"alpha", "beta", "gamma"}
    meta = schema.DatasetMeta.load(out)
    assert meta.family == "ace-step-v1" and meta.ssl_names == ["mert", "m-hubert"] and meta.storage_dtype == "float16"
    from acetune.models.family import get_family

    assert meta.checkpoint_hash == get_family("ace-step-v1").config_hash(tiny_ckpt)

    codec = MusicDCAE.from_pretrained(tiny_ckpt)
    text = TextEncoder.from_pretrained(tiny_ckpt / "umt5-base")
    lyrics = LyricTokenizer.from_vocab(checkpoint_dir=tiny_ckpt)
    ssl_models = {"mert": (HubertModel.from_pretrained(mert).eval(), 24000, 5),
                  "m-hubert": (HubertModel.from_pretrained(mhubert).eval(), 16000, 30)}
    songs = tmp_path / "songs"
    for key, ext in (("alpha", ".wav"), ("beta", ".flac"), ("gamma", ".wav")):
        row, path = rows[key], songs / (key + ext)
        wav = load_song(path, max_duration=360)
        assert row[schema.SOURCE_SIZE] == path.stat().st_size
        assert row[schema.SOURCE_MTIME_NS] == path.stat().st_mtime_ns
        assert row[schema.WINDOW] == 0
        assert row[schema.DURATION] == pytest.approx({"alpha": 2.0, "beta": 3.0, "gamma": 1.0}[key], abs=1e-3)
        latents, lengths = codec.encode(wav[None], torch.tensor([wav.shape[-1]]))
        assert torch.equal(schema.row_tensor(row, schema.LATENTS, "float16"), latents[0].half())
        assert row[schema.LATENT_LENGTH] == int(lengths[0])
        prompts = row[schema.PROMPTS]
        hidden, mask = text.encode(prompts, path="dataset")
        assert torch.equal(schema.row_tensor(row, schema.TEXT_EMBEDS, "float16"), hidden.half())
        assert torch.equal(schema.row_tensor(row, schema.TEXT_MASK, "float16"), mask.to(torch.int8))
        norm_lyrics = LYRICS if key == "alpha" else "[instrumental]"
        assert row[schema.LYRIC_IDS] == lyrics.tokenize_dataset(norm_lyrics)
        speaker_dim = json.loads((tiny_ckpt / "ace_step_transformer" / "config.json").read_text())["speaker_embedding_dim"]
        assert torch.equal(schema.row_tensor(row, schema.SPEAKER_EMB, "float16"),
                           torch.zeros(speaker_dim, dtype=torch.float16))  # the checkpoint's width, not 512
        for name, (model, rate, chunk_s) in ssl_models.items():
            expected = reference_ssl(model, wav, rate, chunk_s)
            got = schema.row_tensor(row, schema.SSL_PREFIX + name, "float16")
            assert got.shape == expected.shape == (sum((min(rate * chunk_s, wav.shape[-1] // (48000 // rate) - s) + 319)
                                                       // 320 for s in range(0, wav.shape[-1] // (48000 // rate),
                                                                              rate * chunk_s)), 32)
            step = expected.pow(2).mean(-1, keepdim=True).sqrt() / schema.SSL_STEPS_PER_RMS
            assert ((got - expected).abs() <= 0.501 * step + 1e-6).all()  # rounding of identical features
    alpha = rows["alpha"][schema.PROMPTS]
    assert len(set(alpha)) == 4 and all(sorted(p.split(", ")) == ["female vocals", "pop", "rock"] for p in alpha)
    assert sorted(rows["beta"][schema.PROMPTS]) == ["ambient piano, slow", "slow, ambient piano"]  # both orders
    assert rows["gamma"][schema.PROMPTS] == ["music"]  # no caption: the reference's ["music"]


def test_bad_song_reported_and_strict_exit(dataset, tmp_path, tiny_ckpt, capsys):
    (tmp_path / "songs" / "gamma.wav").write_bytes(b"RIFF" + b"\x00" * 64)  # broken after build-dataset
    out = tmp_path / "prep"
    args = ("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt)
    assert preprocess(*args) == 0
    err = capsys.readouterr().err
    assert "gamma.wav" in err and "cannot decode audio" in err
    assert set(rows_by_key(out)) == {"alpha", "beta"}
    assert preprocess(*args, "--strict") == 1  # gamma is tried again and reported again
    assert set(rows_by_key(out)) == {"alpha", "beta"}


def test_resume_skips_finished_and_redoes_changed(dataset, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "prep"
    args = ("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt, "--part_size", "2")
    assert preprocess(*args) == 0
    first = rows_by_key(out)
    capsys.readouterr()
    assert preprocess(*args) == 0
    assert "0 to encode" in capsys.readouterr().err
    assert rows_by_key(out).keys() == first.keys()
    make_audio(tmp_path / "songs" / "alpha.wav", 2, 44100, 2.5, seed=7)  # the user re-exported a song
    assert preprocess(*args) == 0
    assert "1 to encode" in capsys.readouterr().err
    again = rows_by_key(out)
    assert again.keys() == first.keys()
    assert again["alpha"][schema.DURATION] == pytest.approx(2.5, abs=1e-3)
    assert again["beta"] == first["beta"]
    # other settings cannot be mixed into the same output
    assert preprocess(*args, "--prompt_variants", "2") == 1
    assert "prompt_variants" in capsys.readouterr().err


def test_split_cuts_overlapping_windows(tmp_path, tiny_ckpt):
    songs = tmp_path / "songs"
    songs.mkdir()
    make_audio(songs / "long.wav", 2, 48000, 5.0)
    ds = build(songs, tmp_path / "ds")
    out = tmp_path / "prep"
    assert preprocess("--input_name", ds, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                      "--max_duration", 2, "--split", "--split_overlap", 0.5) == 0
    rows = rows_by_key(out)
    assert list(rows) == ["long", "long#w1", "long#w2"]  # starts 0, 1.5, 3.0 s
    assert [r[schema.WINDOW] for r in rows.values()] == [0, 1, 2]
    assert all(r[schema.DURATION] == pytest.approx(2.0) for r in rows.values())
    crop = tmp_path / "crop"
    assert preprocess("--input_name", ds, "--output_name", crop, "--checkpoint_dir", tiny_ckpt,
                      "--max_duration", 2) == 0
    (row,) = rows_by_key(crop).values()
    assert row[schema.DURATION] == pytest.approx(2.0)
    # the crop is the first window, padded to the reference's 3 s minimum
    assert row[schema.LATENT_LENGTH] == int(3 * 48000 / 48000 * 44100 / 512 / 8)


def test_wrong_checkpoint_fails_before_any_work(dataset, tmp_path, tiny_ckpt, capsys):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "umt5-base" / "tokenizer.json").unlink()
    out = tmp_path / "prep"
    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", broken) == 1
    assert "tokenizer.json" in capsys.readouterr().err
    assert not out.exists()


def test_remote_code_needs_the_flag(dataset, tmp_path, tiny_ckpt, ssl_dirs, capsys):
    mert = tmp_path / "mert"
    shutil.copytree(ssl_dirs[0], mert)
    config = json.loads((mert / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_MERT.MERTModel"}
    (mert / "config.json").write_text(json.dumps(config))
    out = tmp_path / "prep"
    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                      "--mert_dir", mert) == 1
    assert "--trust_remote_code" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_writes_nothing(dataset, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "prep"
    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt, "--dry_run") == 0
    assert capsys.readouterr().out.count("would encode") == 3
    assert not out.exists()
