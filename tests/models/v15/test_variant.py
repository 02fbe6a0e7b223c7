"""Checkpoint variant / XL detection and the recipe it selects (config files only: no weights)."""

from __future__ import annotations

import json

import pytest

from acetune.errors import TrainingError
from acetune.models.v15 import variant
from acetune.models.v15.family import FAMILY
from acetune.models.v15.objective import Recipe


def _folder(tmp_path, name, **config):
    folder = tmp_path / name
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"hidden_size": 2048, **config}))
    return folder


@pytest.mark.parametrize("name, config, want", [
    ("anything", {"model_version": "turbo", "is_turbo": True}, "turbo"),
    ("acestep-v15-turbo-diffusers", {"model_version": "sft"}, "sft"),  # the config wins over the name
    ("x", {"model_version": "xl_base"}, "base"),
    ("x", {"is_turbo": True}, "turbo"),
    ("acestep-v15-sft-diffusers", {}, "sft"),
    ("acestep-v15-xl-turbo", {"model_version": None}, "turbo"),
    ("my_finetune", {}, "base"),  # diffusers treats any non-turbo DiT as base (CFG on)
])
def test_variant_from_config_then_folder_name(tmp_path, name, config, want):
    assert variant.variant_of(_folder(tmp_path, name, **config)) == want


def test_xl_from_widths_or_name(tmp_path):
    assert variant.is_xl(_folder(tmp_path, "a", hidden_size=2560, encoder_hidden_size=2048))
    assert variant.is_xl(_folder(tmp_path, "acestep-v15-xl-sft", encoder_hidden_size=None))
    assert not variant.is_xl(_folder(tmp_path, "acestep-v15-sft", encoder_hidden_size=2048))


def test_hub_cache_snapshot_is_named_by_repo(tmp_path):
    snap = tmp_path / "models--ACE-Step--acestep-v15-xl-turbo-diffusers" / "snapshots" / "0a1b2c"
    snap.mkdir(parents=True)
    assert variant.checkpoint_name(snap) == "ACE-Step/acestep-v15-xl-turbo-diffusers"


def test_flags_override_the_variant_recipe(tmp_path):
    sft, turbo = _folder(tmp_path, "s", model_version="sft"), _folder(tmp_path, "t", model_version="turbo")
    assert FAMILY.training_recipe(sft) == Recipe("logit_normal", 0.15)
    assert FAMILY.training_recipe(turbo) == Recipe("discrete", 0.0)
    assert FAMILY.training_recipe(turbo, "logit_normal") == Recipe("logit_normal", 0.0)  # upstream's turbo run
    assert FAMILY.training_recipe(sft, "discrete", 0.0) == Recipe("discrete", 0.0)
    assert FAMILY.training_recipe(turbo, cfg_dropout=0.1).cfg_dropout == 0.1
    with pytest.raises(TrainingError, match="--timestep_sampling"):
        FAMILY.training_recipe(sft, "uniform")


def test_identity_differs_by_condition_weights_not_by_name(tmp_path):
    import torch

    folder = _folder(tmp_path, "ckpt", model_version="turbo")
    null = {"null_condition_emb": torch.ones(1, 1, 4), "silence_latent": torch.zeros(1, 2, 3)}
    a = variant.identity(folder, "cfg", null)
    renamed = dict(a, name="elsewhere")
    assert variant.same_checkpoint(a, renamed)
    other = variant.identity(folder, "cfg", {**null, "null_condition_emb": torch.full((1, 1, 4), 2.0)})
    assert not variant.same_checkpoint(a, other)
    assert variant.describe(a).startswith("ckpt (turbo, 2B, widths 2048/2048, config cfg, weights ")


def test_preprocess_resume_compares_the_recorded_checkpoint(tmp_path):
    from acetune.dataset.schema import DatasetMeta
    from acetune.errors import UsageError
    from acetune.preprocessing.store import check_compatible

    ident = {"name": "a", "variant": "turbo", "xl": False, "decoder_width": 32, "condition_width": 32,
             "config_hash": "c", "condition_hash": "w"}
    made = DatasetMeta(family="acestep15", checkpoint_hash="h", checkpoint=ident)
    check_compatible(made, DatasetMeta(family="acestep15", checkpoint_hash="h", checkpoint=dict(ident, name="b")),
                     tmp_path, fix="")  # a renamed folder resumes
    check_compatible(DatasetMeta(family="acestep15", checkpoint_hash="h"), made, tmp_path, fix="")  # older output
    with pytest.raises(UsageError, match="checkpoint"):
        check_compatible(made, DatasetMeta(family="acestep15", checkpoint_hash="h",
                                           checkpoint=dict(ident, condition_hash="other")), tmp_path, fix="")
