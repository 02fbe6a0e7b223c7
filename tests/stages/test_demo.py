"""`acetune demo --quick` end to end in a temp dir (CPU, ~25 s), plus its tiny lyric vocab and songs.

Asserts every stage's outputs: the tiny checkpoint in the official layout, the songs and sidecars,
the filename dataset, the preprocessed dataset, the LoRA checkpoint with validation renders at the
first and last step, a fixed-noise loss on the songs that fell, the exported ComfyUI file, a
valid 48 kHz stereo render, and the held-out validation loss, best checkpoint and evaluation report.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from acetune.errors import UsageError
from acetune.layout import LYRIC_VOCAB_FILE, V1_COMPONENT_DIRS
from acetune.stages import demo

STEPS = 6


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """`acetune demo --quick` in this process (the stages are in-process `run(args)` calls either way; a
    subprocess only added its imports), on one thread as a CLI run with OMP_NUM_THREADS=1."""
    from acetune.cli import run_command

    workdir = tmp_path_factory.mktemp("demo") / "acetune_demo"
    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_command("demo", ["--quick", "--workdir", str(workdir), "--steps", str(STEPS)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, (out.getvalue() + err.getvalue())[-4000:]
    return workdir, json.loads((workdir / demo.SUMMARY_FILE).read_text()), out.getvalue()


def test_every_stage_ran(demo_run):
    _, summary, out = demo_run
    names = [s["name"] for s in summary["stages"]]
    assert names == ["model set + songs", "build-dataset", "preprocess", "train", "export", "generate", "evaluate"]
    assert all(s["code"] == 0 for s in summary["stages"])
    assert "=== acetune demo: done ===" in out and "$ acetune preprocess --input_name" in out


def test_model_set_and_songs(demo_run):
    from tokenizers import Tokenizer

    w, _, _ = demo_run
    ckpt = w / demo.CHECKPOINT
    assert all((ckpt / d / "config.json").is_file() for d in V1_COMPONENT_DIRS)
    vocab = Tokenizer.from_file(str(ckpt / LYRIC_VOCAB_FILE))
    config = json.loads((ckpt / "ace_step_transformer" / "config.json").read_text())
    assert config["lyric_encoder_vocab_size"] == vocab.get_vocab_size()
    songs = w / "songs"
    wavs = sorted(songs.glob("*.wav"))
    assert len(wavs) == 3 and len(list(songs.glob("*_prompt.txt"))) == 3 and len(list(songs.glob("*_lyrics.txt"))) == 1
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels) == (48000, 2) and 2.5 < info.duration < 4.5


def test_datasets(demo_run):
    from datasets import load_from_disk

    from acetune.dataset.schema import load_dataset

    w, _, _ = demo_run
    rows = load_from_disk(str(w / "data" / "filenames"))
    assert len(rows) == 3 and sum("walking down the river" in r for r in rows["norm_lyrics"]) == 1
    prep, meta = load_dataset(str(w / "data" / "prep"))
    assert len(prep) == 3 and meta.family == "ace-step-v1" and meta.prompt_variants == 2


def test_training_overfit_and_validation(demo_run):
    from acetune.training.checkpoint import CHECKPOINT_FILES

    w, summary, _ = demo_run
    run_dir = w / "runs" / "demo"
    step_dir = run_dir / f"step-{STEPS:06d}"
    assert all((step_dir / f).is_file() for f in CHECKPOINT_FILES)
    for step in (0, STEPS):
        render = run_dir / "validation" / f"step-{step:06d}" / "0.wav"
        assert sf.info(str(render)).samplerate == 48000
    before, after = next(s for s in summary["stages"] if s["name"] == "train")["facts"]["overfit_loss"]
    assert after < before, (before, after)


def test_validation_loss_best_checkpoint_and_evaluation(demo_run):
    """The kept (best) checkpoint's held-out validation loss is below step 0's; the demo ends with the
    evaluation table and its plot files."""
    from acetune.training.best import read_best
    from acetune.training.loggers import read_metrics

    w, summary, out = demo_run
    run_dir = w / "runs" / "demo"
    best = read_best(run_dir)
    val = {r["step"]: r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r}
    assert sorted(val) == [0, STEPS]
    assert best["step"] in val and best["val_loss"] == val[best["step"]] == min(val.values())
    assert best["val_loss"] < best["step0_val_loss"] == val[0]
    assert (run_dir / f"step-{best['step']:06d}" / "training_state.json").is_file()  # kept through rotation
    assert next(s for s in summary["stages"] if s["name"] == "train")["facts"]["best"] == best
    assert f"best checkpoint (validation loss {best['val_loss']:.6f}" in out
    report = (run_dir / "evaluation" / "report.md").read_text()
    tail = out[out.rindex("=== acetune demo: done ==="):]
    assert report.strip() in tail and tail.rstrip().endswith(".png")  # ends with the table and the plots
    assert f"**Recommended: step-{best['step']:06d}**" in report
    assert not (run_dir / "evaluation" / "renders").exists()  # the training's validation renders were scored
    for name in ("loss.png", "scores.png"):
        assert (run_dir / "evaluation" / "plots" / name).stat().st_size > 1000
    assert (run_dir / "plots" / "loss.png").is_file()  # written at the end of training
    scores = {r["step"]: r for r in read_metrics(run_dir) if "val/style_cos" in r}
    assert sorted(scores) == sorted({0, STEPS, best["step"]}) and all(-1 <= r["val/style_cos"] <= 1 for r in
                                                                     scores.values())


def test_evaluate_lora_files_renders_fresh(demo_run, tmp_path, capsys):
    """`--lora FILE` mode: fresh renders with and without the file, scored against a folder of songs, and a
    strength sweep."""
    from acetune.cli import run_command

    w, _, _ = demo_run
    out = tmp_path / "eval"
    argv = ["--lora", str(w / "demo_style_comfyui.safetensors"), "--checkpoint_dir", str(w / demo.CHECKPOINT),
            "--prompt", "lofi piano", "--duration", "1.5", "--steps", "2", "--reference_audio", str(w / "songs"),
            "--clap_model", str(w / "clap-tiny"), "--device", "cpu", "--output_dir", str(out)]
    assert run_command("evaluate", [*argv, "--strengths", "0.5"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "renders").iterdir()) == ["base", "demo_style_comfyui",
                                                                   "demo_style_comfyui@0.5"]
    report = (out / "report.md").read_text()
    assert "## Strength sweep" in report and "| no LoRA (fresh) |  | 0 |" in report
    assert (out / "plots" / "strengths.png").is_file()
    assert json.loads((out / "scores.json").read_text())["sweep"][0]["strength"] == 0.5
    assert sf.info(str(out / "renders" / "base" / "0.wav")).samplerate == 48000
    scores = json.loads((out / "scores.json").read_text())
    assert scores["recommended"] == "demo_style_comfyui" and scores["checkpoints"][0]["step"] is None
    assert "| demo_style_comfyui |" in report
    mtime = (out / "renders" / "base" / "0.wav").stat().st_mtime_ns
    assert run_command("evaluate", argv) == 0  # a rerun reuses the cached renders
    assert (out / "renders" / "base" / "0.wav").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert run_command("evaluate", [*argv[:4], "--prompt", "x", "--output_dir", str(tmp_path / "e2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # no training songs: one line, before any render
    assert len(err) == 1 and "--reference_audio" in err[0] and not (tmp_path / "e2" / "renders").exists()

    w, _, _ = demo_run
    with safe_open(str(w / "demo_style_comfyui.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    wav, sr = sf.read(str(w / "generated.wav"), always_2d=True)
    assert sr == 48000 and wav.shape[1] == 2 and wav.shape[0] > sr
    assert np.isfinite(wav).all() and np.abs(wav).max() > 1e-3


def test_tiny_lyric_vocab_keeps_the_special_ids(tmp_path):
    from acetune.dataset.demo_songs import SONGS
    from acetune.models.v1.lyrics import LINE_BREAK_ID, START_ID, UNK_ID, LyricTokenizer

    size = demo.write_tiny_lyric_vocab(tmp_path / "vocab.json", [s.lyrics for s in SONGS if s.lyrics])
    tok = LyricTokenizer.from_vocab(tmp_path / "vocab.json")
    ids = tok.tokenize_pipeline(SONGS[2].lyrics)
    assert ids[0] == START_ID and LINE_BREAK_ID in ids and UNK_ID not in ids and max(ids) < size
    assert tok.tokenizer.token_to_id("[verse]") is not None and tok.tokenizer.token_to_id("[STOP]") == 0


def test_workdir_not_made_by_the_demo_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not made by acetune demo"):
        demo.prepare_workdir(tmp_path)
    assert (tmp_path / "mine.txt").is_file()
