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
    assert len(rows) == 4
    assert rows[0].endswith("(lyric encoder each step) | 8 s | 6 s | **0.75** |")
    assert rows[1].endswith("(cached lyric path) | 8 s | 4 s | **0.50** |")
    assert rows[3].startswith("| peak RSS, ") and rows[3].endswith("| 8 GB | 5 GB | **0.62** |")


def test_warmup_calls_are_made_but_not_counted(vs_fork):
    calls = []
    vs_fork.time_calls(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
