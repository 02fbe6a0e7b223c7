"""The report's pure parts: recommendation, saturation point, table, plots from a metrics.jsonl, flag checks."""

from __future__ import annotations

import math

import pytest

from acetune.cli import parse_args
from acetune.errors import UsageError
from acetune.evaluation import report
from acetune.evaluation.report import Row
from acetune.training.loggers import JsonlLogger, merge_metrics, read_metrics


def test_recommend_prefers_the_best_validation_loss_then_style_within_prompt_tolerance():
    base = Row("no LoRA", step=0, prompt=0.30, style=0.50)
    rows = [Row("a", step=100, prompt=0.31, style=0.55), Row("b", step=200, prompt=0.20, style=0.70),
            Row("c", step=300, prompt=0.27, style=0.60)]
    assert report.recommend(rows, base, best_step=100)[0].label == "a"
    pick, why = report.recommend(rows, base, best_step=None)
    assert pick.label == "c" and "prompt adherence" in why  # b loses 0.10 of prompt adherence: > 0.05
    assert report.recommend([], base, None) == (None, "no checkpoint could be scored")


def test_saturation_is_the_first_strength_with_90_percent_of_the_largest_gain():
    base = Row("no LoRA", strength=0.0, style=0.50)
    sweep = [Row("x", strength=s, style=v) for s, v in ((1.25, 0.600), (0.5, 0.550), (0.75, 0.591), (1.0, 0.598))]
    assert report.saturation(sweep, base).strength == 0.75  # gain 0.091 >= 0.9 x 0.100
    assert report.saturation([Row("x", strength=1.0, style=0.45)], base) is None  # no gain at all
    table = report.markdown_table(sorted(sweep, key=lambda r: r.strength), base).splitlines()
    assert len(table) == 2 + 1 + 4 and table[2].startswith("| no LoRA |") and "+0.0500" in table[3]


def test_training_plots_and_merged_scores(tmp_path):
    pytest.importorskip("matplotlib")
    log = JsonlLogger(tmp_path)
    for step in range(1, 11):
        log.log({"train/loss": 1.0 / step, "train/learning_rate": 1e-4}, step)
        if step % 5 == 0:
            log.log({"val/loss": 2.0 / step}, step)
    log.close()
    (loss,) = report.plot_training(tmp_path)
    assert loss == tmp_path / report.PLOTS_DIR / "loss.png" and loss.read_bytes()[:4] == b"\x89PNG"
    for _ in range(2):  # a rerun of the evaluation replaces its own records
        merge_metrics(tmp_path, {0: {"val/style_cos": 0.5}, 10: {"val/style_cos": 0.6, "val/clap_prompt": 0.2}})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "val/style_cos" in r] == [0, 10]
    assert len([r for r in records if "train/loss" in r]) == 10  # training records untouched
    assert [p.name for p in report.plot_training(tmp_path)] == ["loss.png", "scores.png"]
    assert report.plot_training(tmp_path / "empty") == []


def test_evaluate_flags():
    from acetune.stages import evaluate

    args = parse_args(evaluate.Args, ["--run", "runs/x", "--strengths", "0.5, 1.0,1.25"], "acetune evaluate")
    assert args.strength_values == [0.5, 1.0, 1.25] and args.output_dir.endswith("evaluation")
    for argv, message in ((["--strengths", "1"], "either --run"), (["--run", "r", "--lora", "a"], "either --run"),
                          (["--run", "r", "--strengths", "a,b"], "comma-separated"),
                          (["--run", "r", "--strengths", "0"], "> 0")):
        with pytest.raises((UsageError, SystemExit)) as err:
            parse_args(evaluate.Args, argv, "acetune evaluate")
        assert err.type is SystemExit or message in str(err.value)
    assert not math.isnan(evaluate.Args(run="r").threshold)
