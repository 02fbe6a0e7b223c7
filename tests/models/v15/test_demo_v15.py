"""`acetune demo --model_family acestep15 --quick`: the demo's stage sequence on a tiny ACE-Step 1.5 model."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from safetensors import safe_open

from acetune.cli import run_command
from acetune.stages import demo

STEPS = 4


def test_demo_runs_on_acestep15(tmp_path, monkeypatch):
    monkeypatch.setenv("ACETUNE_NO_PROGRESS", "1")
    w = tmp_path / "acetune_demo"
    assert run_command("demo", ["--quick", "--model_family", "acestep15", "--workdir", str(w),
                                "--steps", str(STEPS)]) == 0
    summary = json.loads((w / demo.SUMMARY_FILE).read_text())
    assert [s["name"] for s in summary["stages"]] == ["model set + songs", "build-dataset", "preprocess", "train",
                                                      "export", "generate", "evaluate"]
    assert json.loads((w / demo.CHECKPOINT_V15 / "model_index.json").read_text())["_class_name"] == "AceStepPipeline"

    from acetune.dataset.schema import load_dataset

    prep, meta = load_dataset(str(w / "data" / "prep"))
    assert meta.family == "acestep15" and len(prep) == 3
    run_dir = w / "runs" / "demo"
    assert json.loads((run_dir / f"step-{STEPS:06d}" / "train_config.json").read_text())["family"] == "acestep15"
    for step in (0, STEPS):  # validation renders through AceStepPipeline at the first and last step
        assert sf.info(str(run_dir / "validation" / f"step-{step:06d}" / "0.wav")).samplerate == 48000
    before, after = next(s for s in summary["stages"] if s["name"] == "train")["facts"]["overfit_loss"]
    assert after < before, (before, after)
    from acetune.training.best import read_best
    from acetune.training.loggers import read_metrics

    val = {r["step"]: r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r}  # the 1.5 family's hook
    assert sorted(val) == [0, STEPS] and read_best(run_dir)["step0_val_loss"] == val[0]
    assert "| no LoRA | 0 |" in (run_dir / "evaluation" / "report.md").read_text()
    with safe_open(str(w / "demo_style_comfyui.safetensors"), "pt") as f:
        assert all(k.startswith("base_model.model.layers.") for k in f.keys())
    wav, sr = sf.read(str(w / "generated.wav"), always_2d=True)
    assert sr == 48000 and wav.shape == (2 * sr, 2) and np.isfinite(wav).all() and np.abs(wav).max() > 1e-3
