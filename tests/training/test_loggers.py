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
    """metrics.jsonl (read by the studio's monitor): one object per step, lr as train/lr, resume drops later steps."""
    import json

    from acetune.training.loggers import METRICS_FILE, JsonlMetrics, MetricsLogger

    log = JsonlMetrics(MetricsLogger(), tmp_path)
    for step in (1, 2, 3):
        log.log({"train/loss": 1.0 / step, "train/learning_rate": 1e-4}, step)
    rows = [json.loads(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()]  # flushed, not closed
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["train/loss"] == 1 / 3 and rows[0]["train/lr"] == 1e-4
    assert all(isinstance(r["time"], float) for r in rows) and "train/learning_rate" not in rows[0]
    log.close()
    (tmp_path / METRICS_FILE).write_text((tmp_path / METRICS_FILE).read_text() + '{"step": 4, "ti')  # cut by a kill
    log = JsonlMetrics(MetricsLogger(), tmp_path, resume_step=2)  # resumed from step-000002
    log.log({"train/loss": 0.1}, 3)
    log.close()
    assert [json.loads(x)["step"] for x in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3]
    JsonlMetrics(MetricsLogger(), tmp_path).close()  # a new run starts afresh
    assert (tmp_path / METRICS_FILE).read_text() == ""
