"""`acetune train --recipe NAME`: named sets of train flag values, one table per model family.

A recipe is resolved first, before anything is loaded: every flag it names takes the recipe's value
unless the user set that flag (on the command line, in `--config`, or, for a programmatic `Args`,
to a value other than its default). What a recipe cannot reproduce is listed, with the reason, in
docs/train.md ("Recipes").

- `acetune`: this project's defaults, written out (the same as giving no recipe).
- `fork`: as woct0rdho/ACE-Step `trainer_new.py` trains. Its preprocessing bakes one prompt per
  song and sets every condition dropout to 0; the transformer is cast to bf16 before the LoRA is
  added, so the LoRA weights (and AdamW's state) are bf16; the lyric encoder runs every step (in
  train mode, Conformer dropout 0.1); gradient clipping at norm 1.0.
- `upstream`: as ace-step/ACE-Step `trainer.py` trains: fp32 everything (`--precision 32`), condition
  dropout 0.15 / 0.5 / 0.15, a prompt drawn per step, lyric encoder every step, clipping at 0.5.
  For ACE-Step 1.5: the official corrected trainer (training_v2), logit-normal t and CFG dropout 0.15.

Rows are keyed by family name (`Family.name`); `ANY_FAMILY` holds values that suit every family.
A recipe with no row for the checkpoint's family is refused.
"""

from __future__ import annotations

import dataclasses

from acetune.errors import UsageError

ANY_FAMILY = "*"
V1 = "ace-step-v1"  # `models.v1.family.V1Family.name` (a test checks the two agree)
V15 = "acestep15"  # `models.v15.schema.FAMILY_NAME` (the same test checks it)

# Flags every recipe states, so a recipe stays what it says when a default changes.
_OPTIMISATION = {"optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-2, "warmup_steps": 10,
                 "batch_size": 1, "accumulate_grad_batches": 1, "shift": 3.0, "ssl_coeff": 1.0,
                 "gradient_checkpointing": "auto", "int8": False, "train_lyrics_embedder": False}

RECIPES: dict[str, dict[str, dict[str, object]]] = {
    "acetune": {
        ANY_FAMILY: {**_OPTIMISATION, "precision": "bf16-mixed", "gradient_clip_val": 1.0,
                     "text_dropout": 0.15, "speaker_dropout": 0.5, "lyrics_dropout": 0.15,
                     "prompt_draw": "per_step", "cache_lyrics": True},
    },
    "fork": {
        V1: {**_OPTIMISATION, "precision": "bf16", "gradient_clip_val": 1.0,
             "text_dropout": 0.0, "speaker_dropout": 0.0, "lyrics_dropout": 0.0,
             "prompt_draw": "once", "cache_lyrics": False},
    },
    "upstream": {
        V1: {**_OPTIMISATION, "precision": "32", "gradient_clip_val": 0.5,
             "text_dropout": 0.15, "speaker_dropout": 0.5, "lyrics_dropout": 0.15,
             "prompt_draw": "per_step", "cache_lyrics": False},
        # the official corrected trainer (acestep/training_v2) on any checkpoint variant, turbo included:
        # logit-normal t and 15% CFG dropout (docs/acestep15.md, tests/models/v15/test_step_parity.py)
        V15: {"timestep_sampling": "logit_normal", "cfg_dropout": 0.15},
    },
}


def recipe_values(recipe: str, family: str) -> dict[str, object]:
    """The flag values of `recipe` for `family` (its own row, else the `ANY_FAMILY` row).

    Raises:
        UsageError: unknown recipe, or none for this family.
    """
    if recipe not in RECIPES:
        raise UsageError(f"unknown --recipe {recipe!r}", fix=f"use one of: {', '.join(RECIPES)}")
    rows = RECIPES[recipe]
    if family in rows:
        return dict(rows[family])
    if ANY_FAMILY in rows:
        return dict(rows[ANY_FAMILY])
    families = ", ".join(rows)
    raise UsageError(f"--recipe {recipe} is defined for {families}, not for {family}",
                     fix="use --recipe acetune, or set the flags yourself")


def apply_recipe(args, family: str) -> dict[str, object]:
    """Set the recipe's flags on `args` (a train `Args`) where the user did not; returns what was set.

    A flag counts as the user's when it is in `args.given_flags` (filled by the CLI from the command
    line and `--config`) or when its value differs from the field's default.
    """
    values = recipe_values(args.recipe, family)
    defaults = {f.name: f.default for f in dataclasses.fields(args) if f.default is not dataclasses.MISSING}
    given = set(getattr(args, "given_flags", ()))
    applied = {}
    for name, value in values.items():
        if name not in defaults:
            raise KeyError(f"recipe {args.recipe} names {name}, which is not a train flag")
        if name in given or getattr(args, name) != defaults[name]:
            continue
        setattr(args, name, value)
        applied[name] = value
    return applied
