"""The held-out validation loss on ACE-Step 1.5 goes through the same family hook and is bit-identical too."""

from __future__ import annotations

import math

from acetune.cli import parse_args
from acetune.training.val_loss import validation_loss


def test_v15_validation_loss_is_bitwise_deterministic(v15_prepared, tmp_path):
    checkpoint, prep = v15_prepared
    lora = tmp_path / "lora.json"
    lora.write_text('{"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}')
    from acetune.stages import train
    from acetune.training.setup import build_run

    run_ = build_run(parse_args(train.Args, ["--dataset_path", str(prep), "--checkpoint_dir", str(checkpoint), "--output_dir",
                   str(tmp_path / "out"), "--lora_config_path", str(lora), "--precision", "32", "--device", "cpu",
                   "--logger", "none", "--validation_dataset", str(prep)], "acetune train"), echo=lambda _: None)[0]
    cfg = run_.config
    first, second = (validation_loss(run_.model, run_.family, cfg.val_loss, compute_dtype=cfg.compute_dtype,
                                     autocast=cfg.autocast) for _ in range(2))
    assert first == second and math.isfinite(first) and first > 0
