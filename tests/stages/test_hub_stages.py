"""The stages with Hub repo ids, against the local Hub (tests/hub_server.py) serving the tiny model sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acetune import hub
from acetune.cli import run_command
from acetune.dataset import schema
from acetune.layout import V1_DCAE_DIR, V1_TRANSFORMER_DIR, WEIGHTS_FILE
from audio_fixtures import make_audio

V1 = hub.MODELS["v1"].repo_id


def _weights(snapshot: Path, component: str) -> Path:
    return snapshot / component / WEIGHTS_FILE


def _snapshots(repo_id: str) -> list[Path]:
    root = hub.hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def prep(local_hub, hub_models, tmp_path_factory):
    """`acetune preprocess --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B --revision v1.0 --mhubert_dir mhubert`
    into a fresh HF_HOME; returns (output folder, HF_HOME)."""
    root = tmp_path_factory.mktemp("hub_prep")
    songs = root / "songs"
    songs.mkdir()
    make_audio(songs / "alpha.wav", 2, 48000, 2.0, seed=1)
    (songs / "alpha_prompt.txt").write_text("rock, female vocals", encoding="utf-8")
    make_audio(songs / "beta.flac", 1, 44100, 1.5, seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", local_hub.url)
        mp.setenv("HF_HOME", str(root / "hf_home"))
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(root / "songs_fn")]) == 0
        assert run_command("preprocess", ["--input_name", str(root / "songs_fn"), "--output_name", str(root / "prep"),
                                          "--checkpoint_dir", V1, "--revision", "v1.0", "--mhubert_dir", "mhubert",
                                          "--prompt_variants", "1"]) == 0
    return root / "prep", root / "hf_home"


def test_preprocess_with_a_repo_id_fetches_only_the_encoders_and_records_the_revision(prep, hub_models, monkeypatch):
    out, hf_home = prep
    monkeypatch.setenv("HF_HOME", str(hf_home))
    ds, meta = schema.load_dataset(out)
    assert sorted(ds[schema.KEY]) == ["alpha", "beta"]
    assert meta.ssl_names == ["m-hubert"] and meta.settings["ssl_models"] == {"m-hubert": "mHuBERT-147"}
    sources = meta.settings["model_sources"]
    assert sources["checkpoint_dir"] == {"repo_id": V1, "repo_type": "model", "revision": "v1.0",
                                         "commit": hub_models["v1"]}
    assert sources["mhubert_dir"]["commit"] == hub_models["mhubert"]
    (snapshot,) = _snapshots(V1)
    assert _weights(snapshot, V1_DCAE_DIR).is_file()  # the codec preprocess reads ...
    assert (snapshot / V1_TRANSFORMER_DIR / "config.json").is_file()
    assert not _weights(snapshot, V1_TRANSFORMER_DIR).exists()  # ... but not the transformer it does not


def test_train_with_a_repo_id_fetches_only_the_transformer(prep, hub_models, hub_env, tmp_path):
    out, _ = prep
    lora = tmp_path / "lora_r4.json"
    lora.write_text('{"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k"]}')
    run_dir = tmp_path / "run"
    assert run_command("train", ["--dataset_path", str(out), "--checkpoint_dir", "v1", "--output_dir", str(run_dir),
                                 "--lora_config_path", str(lora), "--precision", "32", "--device", "cpu",
                                 "--logger", "none", "--max_steps", "2", "--every_n_train_steps", "2",
                                 "--warmup_steps", "1"]) == 0
    config = json.loads(next(run_dir.glob("step-*/train_config.json")).read_text())
    assert config["checkpoint_source"]["commit"] == hub_models["v1"]
    assert config["checkpoint_dir"] == "v1"  # the run config keeps what the user typed
    (snapshot,) = _snapshots(V1)  # this test's own, empty HF_HOME
    assert _weights(snapshot, V1_TRANSFORMER_DIR).is_file() and not _weights(snapshot, V1_DCAE_DIR).exists()


def test_download_then_doctor(hub_models, hub_env, tmp_path, monkeypatch, capsys):
    assert run_command("download", ["v1"]) == 0
    out = capsys.readouterr().out
    assert f"{V1}@{hub_models['v1']}" in out and "0 problem(s)" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # doctor on the repo id: the cached download, no network
    assert run_command("doctor", ["--checkpoint_dir", V1]) == 0
    monkeypatch.delenv("HF_HUB_OFFLINE")
    local = tmp_path / "acestep15"
    assert run_command("download", ["acestep15-turbo", "--local_dir", str(local)]) == 0
    assert "acestep15 checkpoint layout complete" in capsys.readouterr().out
    assert (local / "model_index.json").is_file() and (local / "transformer" / WEIGHTS_FILE).is_file()
    assert run_command("download", ["mhubert"]) == 0 and "mhubert model (hubert)" in capsys.readouterr().out


def test_download_refuses_a_repo_that_is_not_the_expected_model(hub_models, hub_env, local_hub, capsys):
    assert run_command("download", ["mert"]) == 1  # the repo holds a HuBERT, not MERT
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and "is not a mert model (config.json model_type 'hubert'" in err[0]
    local_hub.add("acetune-test/not-v1", {"ace_step_transformer/config.json": b'{"_class_name": "Other"}'})
    assert run_command("download", ["acetune-test/not-v1"]) == 0  # unknown repo: downloaded, said unchecked
    assert "downloaded without a check" in capsys.readouterr().out


def test_acestep15_preprocess_and_train_from_a_short_name(hub_models, hub_env, tmp_path):
    """1.5: preprocess fetches the encoders without the DiT, train adds the DiT and condition encoder."""
    songs = tmp_path / "songs"
    songs.mkdir()
    make_audio(songs / "one.wav", 2, 48000, 1.0, seed=3)
    (songs / "one_prompt.txt").write_text("house, 124 bpm", encoding="utf-8")
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(tmp_path / "fn")]) == 0
    assert run_command("preprocess", ["--input_name", str(tmp_path / "fn"), "--output_name", str(tmp_path / "prep"),
                                      "--checkpoint_dir", "acestep15-turbo", "--model_family", "acestep15",
                                      "--prompt_variants", "1"]) == 0
    repo = hub.MODELS["acestep15-turbo"].repo_id
    (snapshot,) = _snapshots(repo)
    assert (snapshot / "vae" / WEIGHTS_FILE).is_file() and not (snapshot / "transformer" / WEIGHTS_FILE).exists()
    _, meta = schema.load_dataset(tmp_path / "prep")
    assert meta.settings["model_sources"]["checkpoint_dir"]["commit"] == hub_models["acestep15-turbo"]
    lora = tmp_path / "lora.json"
    lora.write_text('{"r": 2, "lora_alpha": 2, "target_modules": ["to_q"]}')
    assert run_command("train", ["--dataset_path", str(tmp_path / "prep"), "--checkpoint_dir", "acestep15-turbo",
                                 "--output_dir", str(tmp_path / "run"), "--lora_config_path", str(lora),
                                 "--precision", "32", "--device", "cpu", "--logger", "none", "--max_steps", "1",
                                 "--warmup_steps", "0"]) == 0
    assert (snapshot / "transformer" / WEIGHTS_FILE).is_file()
