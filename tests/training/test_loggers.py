"""Loggers: TensorBoard events read back with EventAccumulator; wandb offline writes its run files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acetune.errors import UsageError
from acetune.training.loggers import MetricsLogger, TensorBoardLogger, build_logger


def _wav(sr: int = 8000, channels: int = 2) -> torch.Tensor:
    t = torch.arange(sr // 4) / sr
    return torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * t)] * channels)  # (channels, samples)


def test_tensorboard_events_hold_scalars_audio_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with build_logger("tensorboard", tmp_path, config={"learning_rate": 1e-4}) as log:
        assert isinstance(log, TensorBoardLogger)
        for step in range(1, 4):
            log.log({"train/loss": 1.0 / step, "train/learning_rate": 1e-4 * step}, step)
        log.log_audio("sample/pred", _wav(), 8000, 3)
        log.log_image("sample/mel", np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16), 3)

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "audio": 0, "images": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [round(e.value, 6) for e in loss] == [1.0, 0.5, 0.333333]
    assert events.Scalars("train/learning_rate")[-1].value == pytest.approx(3e-4)
    (audio,) = events.Audio("sample/pred")
    assert (audio.step, audio.sample_rate, audio.length_frames, audio.content_type) == (3, 8000, 2000, "audio/wav")
    (image,) = events.Images("sample/mel")
    assert (image.step, image.height, image.width) == (3, 12, 16)


def test_wandb_offline_writes_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    log = build_logger("wandb", tmp_path, run_name="unit", config={"seed": 3})
    log.log({"train/loss": 0.25}, 1)
    log.log_audio("sample/pred", _wav(channels=1)[0], 8000, 2)
    log.log_image("sample/mel", np.zeros((4, 5, 3), dtype=np.uint8), 2)
    log.close()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (data,) = run_dir.glob("run-*.wandb")
    assert data.stat().st_size > 0
    assert list((run_dir / "files" / "media" / "audio").rglob("*.wav"))
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))


def test_none_logger_and_bad_kind(tmp_path):
    log = build_logger("none", tmp_path)
    assert type(log) is MetricsLogger
    log.log({"a": 1.0}, 0)
    log.log_audio("x", np.zeros(10), 100, 0)
    log.log_image("x", np.zeros((2, 2)), 0)
    log.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(UsageError, match="unknown logger 'mlflow'"):
        build_logger("mlflow", tmp_path)


def test_bad_media_shapes_raise(tmp_path):
    with build_logger("tensorboard", tmp_path) as log, pytest.raises(ValueError, match="audio must be"):
        log.log_audio("x", np.zeros((1, 2, 3)), 100, 0)
    with build_logger("tensorboard", tmp_path) as log, pytest.raises(ValueError, match="image must be"):
        log.log_image("x", np.zeros((2, 2, 5)), 0)


def test_metrics_jsonl_contract(tmp_path):
    """One JSON object per line with step, time and the metrics; flushed per write; resume drops later steps."""
    import json
    import time

    from acetune.training.loggers import METRICS_FILE, JsonlLogger, TeeLogger, read_metrics

    before = time.time()
    inner = []

    class Recorder(MetricsLogger):
        def log(self, metrics, step):
            inner.append((step, dict(metrics)))

    log = TeeLogger(JsonlLogger(tmp_path), Recorder())
    for step in range(1, 5):
        log.log({"train/loss": 1.0 / step, "train/learning_rate": 1e-4}, step)
        lines = (tmp_path / METRICS_FILE).read_text().splitlines()  # readable before close: flushed
        assert len(lines) == step
    log.log({"val/loss": float("nan")}, 4)
    log.close()
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4]
    assert records[1]["train/loss"] == 0.5 and records[1]["train/lr"] == 1e-4  # the contract's short name
    assert "train/learning_rate" not in records[1] and inner[1] == (2, {"train/loss": 0.5, "train/learning_rate": 1e-4})
    assert before <= records[0]["time"] <= records[-1]["time"] <= time.time()
    assert records[-1]["val/loss"] is None  # NaN is not JSON

    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 9, "train/lo')  # a torn last line from a crash
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 4]
    JsonlLogger(tmp_path, resume_step=2).close()  # resume from step 2: steps 3, 4 will be trained again
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    JsonlLogger(tmp_path).close()  # a fresh run starts an empty file
    assert read_metrics(tmp_path) == []
