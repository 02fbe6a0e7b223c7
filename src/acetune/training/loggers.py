"""Metrics loggers for training, chosen by `--logger tensorboard|wandb|none`.

One tiny interface, `MetricsLogger` (`log`, `log_audio`, `log_image`, `close`), with three
implementations. The base class itself is the "none" logger: every call is a no-op, so the loop
never branches on the logger kind. Build a logger on the main process only (other DDP ranks get
"none").

- TensorBoard: torch's `SummaryWriter` into `log_dir` (needs the `tensorboard` package), as the
  upstream ACE-Step trainer (Lightning `TensorBoardLogger`).
- Wandb: imported lazily; `WANDB_MODE=offline` writes the run under `log_dir/wandb/` with no
  network (`wandb sync` uploads it later), as the woct0rdho fork (Lightning `WandbLogger`,
  project "ace-step-lora").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from acetune.errors import UsageError

logger = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "wandb", "none")
DEFAULT_PROJECT = "ace-step-lora"  # the fork's wandb project name


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly bf16 on GPU
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _audio_channels_last(wav: Any) -> np.ndarray:
    """(samples,) or (channels, samples) -> float32 (samples, channels), clipped to [-1, 1]."""
    arr = _to_numpy(wav).astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim == 2:
        arr = arr.T  # acetune audio is (channels, samples)
    else:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {arr.shape}")
    return np.clip(arr, -1.0, 1.0)


def _image_hwc(array: Any) -> np.ndarray:
    """(H, W) or (H, W, C) with C in 1/3/4, uint8 or float in [0, 1] -> (H, W, C)."""
    arr = _to_numpy(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    return arr


class MetricsLogger:
    """The interface, and the "none" logger: every method does nothing.

    `log({"train/loss": 0.5, "train/learning_rate": 1e-4}, step)` takes floats (call `.item()`
    once per step in the loop, not here); audio is (samples,) or (channels, samples) in [-1, 1];
    images are (H, W) or (H, W, C).
    """

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_audio(self, name: str, wav: Any, sr: int, step: int) -> None:
        pass

    def log_image(self, name: str, array: Any, step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger(MetricsLogger):
    """Event files in `log_dir` (view with `tensorboard --logdir <log_dir>`)."""

    def __init__(self, log_dir: str | os.PathLike, config: Mapping[str, Any] | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UsageError(
                "--logger tensorboard needs the tensorboard package", fix="pip install tensorboard, or use --logger none"
            ) from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        if config:
            lines = "\n".join(f"    {k}: {v}" for k, v in config.items())  # indented: TB renders markdown
            self.writer.add_text("config", lines, 0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, float(value), step)

    def log_audio(self, name: str, wav: Any, sr: int, step: int) -> None:
        mono = _audio_channels_last(wav).mean(axis=1)  # TensorBoard audio summaries are mono
        self.writer.add_audio(name, mono, step, sample_rate=int(sr))

    def log_image(self, name: str, array: Any, step: int) -> None:
        self.writer.add_image(name, _image_hwc(array), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLogger(MetricsLogger):
    """A wandb run; honours WANDB_MODE (offline/online/disabled) and writes under `log_dir/wandb/`."""

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        project: str = DEFAULT_PROJECT,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        try:
            import wandb
        except ImportError as err:
            raise UsageError(
                "--logger wandb needs the wandb package", fix="pip install wandb, or use --logger tensorboard"
            ) from err
        self._wandb = wandb
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=project, name=run_name, dir=str(log_dir), config=dict(config or {}))
        except Exception as err:  # not logged in, no network, ...: wandb raises several types
            raise UsageError(
                f"wandb could not start a run ({err})",
                fix="run `wandb login`, set WANDB_MODE=offline (then `wandb sync` later), or use --logger tensorboard",
            ) from err

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def log_audio(self, name: str, wav: Any, sr: int, step: int) -> None:
        self.run.log({name: self._wandb.Audio(_audio_channels_last(wav), sample_rate=int(sr))}, step=step)

    def log_image(self, name: str, array: Any, step: int) -> None:
        arr = _image_hwc(array)
        if arr.dtype != np.uint8:
            arr = (arr * 255.0 + 0.5).astype(np.uint8)  # explicit, wandb's float scaling is heuristic
        self.run.log({name: self._wandb.Image(arr)}, step=step)

    def close(self) -> None:
        self.run.finish()


METRICS_FILE = "metrics.jsonl"  # in the run's output folder; the studio's training monitor reads it


class JsonlMetrics(MetricsLogger):
    """Every `log` call also appended to `<run_dir>/metrics.jsonl`, whatever `--logger` is.

    One JSON object per line, {"step": int, "time": unix float, "<metric>": float, ...}, flushed per
    write ("train/learning_rate" is written as "train/lr"). On resume from step N, lines with a step
    above N are dropped first (they belong to steps that will be trained again); a new run starts
    the file afresh. Audio, images and closing go to the wrapped logger.
    """

    def __init__(self, inner: MetricsLogger, run_dir: str | os.PathLike, resume_step: int | None = None):
        import json

        self.inner, self._json = inner, json
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line + "\n")
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut by a crash
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log(metrics, step)
        import time

        row = {"step": int(step), "time": time.time()}
        for name, value in metrics.items():
            row["train/lr" if name == "train/learning_rate" else name] = float(value)
        self._file.write(self._json.dumps(row) + "\n")
        self._file.flush()

    def log_audio(self, name: str, wav: Any, sr: int, step: int) -> None:
        self.inner.log_audio(name, wav, sr, step)

    def log_image(self, name: str, array: Any, step: int) -> None:
        self.inner.log_image(name, array, step)

    def close(self) -> None:
        self._file.close()
        self.inner.close()


def build_logger(
    kind: str,
    log_dir: str | os.PathLike,
    *,
    run_name: str | None = None,
    project: str = DEFAULT_PROJECT,
    config: Mapping[str, Any] | None = None,
) -> MetricsLogger:
    """The logger for `--logger kind` ("tensorboard", "wandb" or "none").

    Args:
        kind: flag value.
        log_dir: where event files / the wandb run folder go (created if missing).
        run_name: wandb run name (the fork passes --exp_name); ignored by TensorBoard.
        project: wandb project.
        config: the resolved training config, recorded with the run.
    """
    if kind == "none":
        return MetricsLogger()
    if kind == "tensorboard":
        return TensorBoardLogger(log_dir, config=config)
    if kind == "wandb":
        return WandbLogger(log_dir, project=project, run_name=run_name, config=config)
    raise UsageError(f"unknown logger {kind!r}", fix=f"use --logger {'|'.join(LOGGERS)}")
