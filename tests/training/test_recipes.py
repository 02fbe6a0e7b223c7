"""`acetune train --recipe`: each recipe resolves to its documented flag values; flags the user set win."""

from __future__ import annotations

import dataclasses
import json

import pytest

from acetune.cli import parse_args
from acetune.errors import UsageError
from acetune.stages import train
from acetune.training.recipes import RECIPES, V1, V15, apply_recipe

REQUIRED = ["--dataset_path", "d", "--checkpoint_dir", "c"]
TRAINING_MATH = ("precision", "text_dropout", "speaker_dropout", "lyrics_dropout", "prompt_draw", "cache_lyrics",
                 "gradient_clip_val", "optimizer", "learning_rate", "weight_decay", "warmup_steps", "shift", "ssl_coeff")


def resolved(argv: list[str], family: str = V1) -> train.Args:
    args = parse_args(train.Args, REQUIRED + argv, "acetune train")
    apply_recipe(args, family)
    return args


def values(args: train.Args) -> dict:
    return {name: getattr(args, name) for name in TRAINING_MATH}


def test_fork_recipe():
    """woct0rdho trainer_new.py: no condition dropout, bf16 LoRA, one prompt per song, lyrics encoded every step."""
    assert values(resolved(["--recipe", "fork"])) == {
        "precision": "bf16", "text_dropout": 0.0, "speaker_dropout": 0.0, "lyrics_dropout": 0.0,
        "prompt_draw": "once", "cache_lyrics": False, "gradient_clip_val": 1.0, "optimizer": "adamw",
        "learning_rate": 1e-4, "weight_decay": 1e-2, "warmup_steps": 10, "shift": 3.0, "ssl_coeff": 1.0}


def test_upstream_recipe():
    """ace-step trainer.py: fp32, dropout 0.15/0.5/0.15, a prompt per step, lyrics every step, clip 0.5."""
    assert values(resolved(["--recipe", "upstream"])) == {
        "precision": "32", "text_dropout": 0.15, "speaker_dropout": 0.5, "lyrics_dropout": 0.15,
        "prompt_draw": "per_step", "cache_lyrics": False, "gradient_clip_val": 0.5, "optimizer": "adamw",
        "learning_rate": 1e-4, "weight_decay": 1e-2, "warmup_steps": 10, "shift": 3.0, "ssl_coeff": 1.0}


def test_upstream_recipe_for_acestep15_is_training_v2():
    args = resolved(["--recipe", "upstream"], family=V15)
    assert (args.timestep_sampling, args.cfg_dropout) == ("logit_normal", 0.15)
    mine = resolved(["--recipe", "upstream", "--cfg_dropout", "0"], family=V15)
    assert (mine.timestep_sampling, mine.cfg_dropout) == ("logit_normal", 0.0)  # a given flag wins
    with pytest.raises(UsageError, match="not for acestep15"):
        resolved(["--recipe", "fork"], family=V15)


def test_acetune_recipe_is_the_defaults():
    assert dataclasses.asdict(resolved(["--recipe", "acetune"])) == dataclasses.asdict(resolved([]))
    assert values(resolved([])) == {
        "precision": "bf16-mixed", "text_dropout": 0.15, "speaker_dropout": 0.5, "lyrics_dropout": 0.15,
        "prompt_draw": "per_step", "cache_lyrics": True, "gradient_clip_val": 1.0, "optimizer": "adamw",
        "learning_rate": 1e-4, "weight_decay": 1e-2, "warmup_steps": 10, "shift": 3.0, "ssl_coeff": 1.0}


def test_explicit_flags_win_even_when_equal_to_the_default():
    args = resolved(["--recipe", "fork", "--text_dropout", "0.15", "--cache-lyrics", "--precision", "bf16-mixed"])
    assert (args.text_dropout, args.cache_lyrics, args.precision) == (0.15, True, "bf16-mixed")
    assert args.speaker_dropout == 0.0  # not given: the recipe's value


def test_config_file_values_win(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"recipe": "upstream", "gradient_clip_val": 1.0}), encoding="utf-8")
    args = resolved(["--config", str(cfg)])
    assert (args.recipe, args.gradient_clip_val, args.precision) == ("upstream", 1.0, "32")


def test_every_recipe_names_real_flags_and_v1_name_matches_the_family():
    from acetune.models.v1.family import V1Family
    from acetune.models.v15.schema import FAMILY_NAME

    assert (V1Family.name, FAMILY_NAME) == (V1, V15)
    fields = {f.name for f in dataclasses.fields(train.Args)}
    for rows in RECIPES.values():
        for row in rows.values():
            assert set(row) <= fields


def test_recipe_without_a_row_for_the_family_is_refused():
    with pytest.raises(UsageError, match="fork is defined for ace-step-v1"):
        resolved(["--recipe", "fork"], family="some-other-family")


def test_prompt_draw_once_keeps_one_variant_per_song_for_the_whole_run(tmp_path):
    import torch
    from train_fixtures import make_checkpoint, make_dataset

    from acetune.dataset.schema import load_dataset
    from acetune.training.data import SongDataset

    data = make_dataset(tmp_path / "data", make_checkpoint(tmp_path / "ckpt"), songs=6, variants=4)
    hf, meta = load_dataset(str(data))
    every = SongDataset(hf, meta)
    picks = {}
    for seed in (0, 1):
        once = SongDataset(hf, meta, prompt_draw="once", seed=seed)
        for i in range(len(once)):
            first, again, full = once[i], once[i], every[i]
            assert first.text_embeds.shape[0] == 1 and torch.equal(first.text_embeds, again.text_embeds)
            k = next(k for k in range(4) if torch.equal(full.text_embeds[k], first.text_embeds[0]))
            picks[(seed, i)] = k
    assert len(set(picks.values())) > 1  # the choice depends on the song (and seed), not always variant 0
