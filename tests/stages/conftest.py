"""Tiny models in the official folder layouts for the preprocess tests (built once per session, on demand)."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_tiny_hubert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide HubertModel (conv stride 320) saved with save_pretrained: stands in for MERT and mHuBERT."""
    import torch
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          feat_extract_norm="group", do_stable_layer_norm=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HubertModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, golden) -> Path:
    from acetune.models.v1.tiny import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("ckpt") / "ACE-Step-v1-tiny"
    return save_tiny_checkpoint(folder, transformer_overrides={"num_layers": 2},
                                lyric_vocab=golden / "lyrics" / "vocab.json")


@pytest.fixture(scope="session")
def ssl_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ssl")
    return save_tiny_hubert(root / "mert", seed=1), save_tiny_hubert(root / "mhubert", seed=2)


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny v1 checkpoint, 3-song preprocessed dataset) for train runs of a few steps (tests/training/train_fixtures)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from train_fixtures import make_checkpoint, make_dataset

    base = tmp_path_factory.mktemp("train_tiny")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint)


@pytest.fixture(scope="session")
def hub_models(local_hub, tiny_ckpt, ssl_dirs, tmp_path_factory) -> dict[str, str]:
    """The tiny model sets on the local Hub under the official repo ids; {short name: commit}.

    `mert` is served with a plain HuBERT config at the pinned MERT commit: the model-type check of
    `acetune download mert` must refuse it (a repo that is not the expected model).
    """
    from acetune.hub import MODELS
    from acetune.models.v15.tiny import save_tiny_checkpoint_v15

    v15 = save_tiny_checkpoint_v15(tmp_path_factory.mktemp("hub_v15") / "acestep15-tiny")
    mert, mhubert = ssl_dirs
    commits = {"v1": local_hub.add(MODELS["v1"].repo_id, tiny_ckpt),
               "acestep15-turbo": local_hub.add(MODELS["acestep15-turbo"].repo_id, v15),
               "mhubert": local_hub.add(MODELS["mhubert"].repo_id, mhubert),
               "mert": local_hub.add(MODELS["mert"].repo_id, mert, commit=MODELS["mert"].revision)}
    local_hub.tag(MODELS["v1"].repo_id, "v1.0", commits["v1"])
    return commits
