"""benchmarks/vs_fork.py: how figures and ratios are formed from interleaved runs (no timing here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def vs_fork():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("vs_fork", BENCH / "vs_fork.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_ratio_is_the_median_of_per_round_pairs_not_the_ratio_of_medians(vs_fork):
    fork = [{"time_s": 10.0}, {"time_s": 20.0}, {"time_s": 30.0}]
    ours = [{"time_s": 9.0}, {"time_s": 6.0}, {"time_s": 24.0}]  # pairwise 0.9, 0.3, 0.8
    f, a, ratio = vs_fork.summarize(fork, ours, "time_s")
    assert (f, a) == (20.0, 9.0)
    assert ratio == pytest.approx(0.8)  # the ratio of the medians would be 0.45


def test_acetune_only_has_no_fork_figure_and_no_ratio(vs_fork):
    assert vs_fork.summarize([], [{"time_s": 2.0}, {"time_s": 4.0}], "time_s") == (None, 3.0, None)
    rows = vs_fork.format_rows("audio-path-180s", [], {"default": [{"time_s": 1.5, "peak_rss_gb": 1.0}]})
    assert rows == ["| audio path, 180 s song (decode, 48k, 44.1k, log-mel, normalise) | — | 1.5 s | — |"]


def test_training_rows_give_time_and_peak_rss_for_both_lyric_paths(vs_fork):
    fork = [{"time_s": 8.0, "peak_rss_gb": 8.0}]
    ours = {"lyric-each-step": [{"time_s": 6.0, "peak_rss_gb": 6.0}], "cached": [{"time_s": 4.0, "peak_rss_gb": 5.0}]}
    rows = vs_fork.format_rows("train-official-10s", fork, ours)
    assert len(rows) == 4  # a variant that did not run has no row
    assert rows[0].endswith("(lyric encoder each step) | 8 s | 6 s | **0.75** |")
    assert rows[1].endswith("(cached lyric path) | 8 s | 4 s | **0.50** |")
    assert rows[3].startswith("| peak RSS, ") and rows[3].endswith("| 8 GB | 5 GB | **0.62** |")
    ours["budget"] = [{"time_s": 3.0, "peak_rss_gb": 5.5}]
    rows = vs_fork.format_rows("train-official-10s", fork, ours)
    assert rows[2].endswith("(cached, `--gradient_checkpointing auto --memory_budget_gb 24`) | 8 s | 3 s | **0.38** |")



def test_compile_variant_reports_its_compile_steps_apart_from_its_step_time(vs_fork):
    fork = [{"time_s": 8.0, "peak_rss_gb": 8.0}, {"time_s": 10.0, "peak_rss_gb": 8.0}]
    ours = {"compile": [{"time_s": 4.0, "peak_rss_gb": 5.0, "warmup_s": 120.0},
                        {"time_s": 4.0, "peak_rss_gb": 5.0, "warmup_s": 80.0}]}
    rows = vs_fork.format_rows("train-medium-60s", fork, ours)
    assert rows[0].endswith("--memory_budget_gb 24 --compile`) | 9 s | 4 s | **0.45** |")  # pairs 0.5, 0.4
    assert rows[-1].endswith("untimed first steps (compilation; not in its step time) | — | 100 s | — |")
    assert len(rows) == 3  # time, peak RSS, compile steps
    assert [v for v, _ in vs_fork.VARIANTS["train-medium-60s"]] == ["lyric-each-step", "cached", "budget", "compile",
                                                                   "int8"]


def test_int8_variant_quantizes_every_block_and_keeps_the_other_weights(vs_fork):
    """As `--int8` loads: each block's linears int8 (quanto), every other weight the det_init value in bf16,
    and the step runs."""
    import torch
    import train as train_bench

    plain, _ = train_bench.build("tiny", torch.bfloat16)
    quantized, setup = train_bench.build("tiny", torch.bfloat16, int8=True)
    for block in quantized.transformer_blocks:
        assert any(type(m).__name__ == "QLinear" for m in block.modules())
        assert all("lora_" in n for n, m in block.named_modules() if type(m) is torch.nn.Linear)  # only LoRA factors
    weights = dict(plain.named_parameters())
    int8_layers = tuple(f"{n}." for n, m in quantized.named_modules() if type(m).__name__ == "QLinear")
    kept = [(n, p) for n, p in quantized.named_parameters()
            if n in weights and "lora_" not in n and not n.startswith(int8_layers)]
    assert len(kept) > 20 and all(torch.equal(p, weights[n]) for n, p in kept)
    assert all(p.dtype == torch.bfloat16 for n, p in kept)
    r = train_bench.measure("tiny", "bf16", "10s", repeats=1, warmup=0, int8=True)
    assert r["time_s"] > 0 and r["peak_rss_gb"] > 0

def test_budget_variant_runs_the_trainers_plan_for_a_24_gb_gpu(vs_fork, capsys):
    """The tiny model at 10 s fits 24 GB with room to spare: the plan checkpoints no block."""
    import train as train_bench

    model, setup = train_bench.build("tiny", __import__("torch").float32)
    assert model.gradient_checkpointing
    assert train_bench.plan_for_budget(model, setup, vs_fork.GPU_BUDGET_GB, seconds=10, ssl=True) == 0
    assert not model.gradient_checkpointing
    assert "gradient checkpointing: off (auto, budget 24 GB)" in capsys.readouterr().err
    # a budget below the weights alone cannot be met: every block (and its parts) is checkpointed
    assert train_bench.plan_for_budget(model, setup, 1e-6, seconds=10, ssl=True) == len(model.transformer_blocks)


def test_warmup_calls_are_made_but_not_counted(vs_fork):
    calls = []
    vs_fork.time_calls(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7


def test_preprocess_rows_give_songs_per_second_with_and_without_load_and_peak_rss(vs_fork):
    fork = [{"time_s": 100.0, "encode_s": 80.0, "songs": 6, "peak_rss_gb": 4.0},
            {"time_s": 120.0, "encode_s": 100.0, "songs": 6, "peak_rss_gb": 4.0}]
    ours = {"default": [{"time_s": 60.0, "encode_s": 50.0, "songs": 6, "peak_rss_gb": 3.0},
                        {"time_s": 48.0, "encode_s": 40.0, "songs": 6, "peak_rss_gb": 3.0}],
            "batch": [{"time_s": 50.0, "encode_s": 40.0, "songs": 6, "peak_rss_gb": 3.5},
                      {"time_s": 60.0, "encode_s": 50.0, "songs": 6, "peak_rss_gb": 3.5}]}
    rows = vs_fork.format_prep_rows(fork, ours)
    assert len(rows) == 5  # 2 variants x (with load, without) + peak RSS of the first variant
    assert "whole run incl. model load: acetune defaults (2 decode threads)" in rows[0]
    # medians 110 s / 54 s; per-round ratios 0.6 and 0.4 -> 0.5 (not 54 / 110)
    assert rows[0].endswith("| 110 s (0.0545 songs/s) | 54 s (0.111 songs/s) | **0.50** |")
    assert "encoding only (load excluded): acetune --batch_songs" in rows[3]
    assert rows[3].endswith("| 90 s (0.0667 songs/s) | 45 s (0.133 songs/s) | **0.50** |")
    assert rows[4].startswith("| peak RSS, ") and rows[4].endswith("| 4 GB | 3 GB | **0.75** |")


def test_preprocess_variants_are_valid_preprocess_command_lines_with_ssl_on(vs_fork, tmp_path):
    from acetune import cli
    from acetune.stages.preprocess import Args

    prep = vs_fork.vs_fork_prep
    assert [v for v, _ in vs_fork.VARIANTS[vs_fork.PREP_CASE]] == list(prep.LEVERS)
    for variant in prep.LEVERS:
        args = cli.parse_args(Args, prep.preprocess_args(tmp_path, tmp_path / "out", variant), "acetune preprocess")
        assert args.mert_dir == tmp_path / "ssl" / "mert" and args.mhubert_dir == tmp_path / "ssl" / "mhubert"
        assert args.dtype == "bfloat16"  # the fork's compute dtype
        assert args.prompt_variants == (4 if variant == "k4" else 1)  # the fork stores one prompt per song
        assert args.num_workers == (0 if variant == "inline" else 2)
        assert (args.batch_songs, args.compile) == (variant == "batch", variant == "compile")


def test_preprocess_songs_mix_lengths_rates_and_formats(vs_fork):
    songs = vs_fork.vs_fork_prep.SONGS
    assert {s[2] for s in songs} == {44100, 48000} and {s[3] for s in songs} == {"wav", "mp3"}
    assert max(s[1] for s in songs) > 47.5  # one song takes the windowed DCAE
