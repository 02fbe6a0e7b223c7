"""Training checkpoints: one folder per save that resumes on its own, written atomically.

Layout of `<output_dir>/step-000100/` (zero-padded optimizer step, litgpt style):

    pytorch_lora_weights.safetensors  LoRA weights in the final (ComfyUI/peft) key layout,
                                      metadata {"format": "pt"}, un-baked fp32 as trained
      or full_weights.safetensors     instead, a full fine-tune's trained tensors at their model names
    adapter_config.json               the peft LoraConfig as given by the caller
    train_config.json                 the resolved training config (flags + file)
    training_state.json               step, epoch, extra, optimizer/scheduler/RNG structure
    training_state.safetensors        every tensor the structure above refers to

No pickle anywhere: tensors go to safetensors and the structure around them to JSON, with
`{"__tensor__": name}` placeholders (plus `__tuple__` / `__items__` markers so tuples and integer
dict keys round-trip exactly). Python floats are written with `repr`, which round-trips exactly.

Atomicity: everything is written into a hidden temp folder next to the target
(`.step-000100.tmp-XXXX`), each file fsynced, the folder fsynced, then renamed into place and the
parent fsynced. A crash at any point leaves either the previous checkpoints untouched plus a stray
temp folder (ignored by `find_latest_checkpoint`, removed by the next save), or the complete new
folder. Mirrors audiocraft `utils/checkpoint.py` (temp name + rename).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from acetune.errors import CheckpointError, UsageError
from acetune.lora.keys import ADAPTER_CONFIG_FILE, LORA_WEIGHTS_FILE, SAVED_METADATA
from acetune.training.best import read_best
from acetune.training.resume import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.json"
STATE_FILE = "training_state.json"
STATE_TENSORS_FILE = "training_state.safetensors"
CHECKPOINT_FILES = (LORA_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, TRAIN_CONFIG_FILE, STATE_FILE, STATE_TENSORS_FILE)
FULL_WEIGHTS_FILE = "full_weights.safetensors"  # takes the LoRA file's place for `train --full`


def checkpoint_files(weights_file: str = LORA_WEIGHTS_FILE) -> tuple[str, ...]:
    """The files of a complete step folder whose weights are in `weights_file`."""
    return (weights_file, *CHECKPOINT_FILES[1:])

FORMAT_VERSION = 1
_STEP_DIGITS = 6
_NAME_RE = re.compile(r"^step-(\d+)$")
_TEMP_RE = re.compile(r"^\.step-\d+\.(tmp|old)-")


def checkpoint_name(step: int) -> str:
    """`step-000100` for step 100."""
    return f"step-{step:0{_STEP_DIGITS}d}"


# ---------------------------------------------------------------------------------------------
# Nested state <-> (JSON structure, flat tensor dict)
# ---------------------------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()  # own storage: no sharing
        return {"__tensor__": path}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint (only tensors and JSON types)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Durable file operations
# ---------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (rename/create). Not possible on Windows, where NTFS journals it."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)  # default=str: Paths etc. in the resolved config
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    save_file(tensors, str(path), metadata=metadata)
    _fsync_file(path)


def _rename(src: Path, dst: Path) -> None:
    # Windows can refuse a rename for a moment while a scanner holds a file open; retry briefly.
    for attempt in range(5):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _remove_stale_temps(parent: Path) -> None:
    """Delete temp folders left by a crashed save (only ever one writer per output dir)."""
    for entry in parent.iterdir():
        if entry.is_dir() and _TEMP_RE.match(entry.name):
            logger.info("removing incomplete checkpoint %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Save / list / prune
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    *,
    lora_state: dict[str, torch.Tensor],
    adapter_config: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    config: dict[str, Any] | None = None,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
    param_names: list[str] | None = None,
    keep_last: int | None = None,
    weights_file: str = LORA_WEIGHTS_FILE,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write `output_dir/step-NNNNNN/` atomically and return its path.

    Args:
        output_dir: the run's checkpoint folder (created if missing).
        step: optimizer steps done (the resumed run continues with step + 1).
        lora_state: {key: tensor} already in the final key layout (e.g. `x.lora_A.weight`).
        adapter_config: JSON-able peft LoraConfig dict, written as adapter_config.json.
        optimizer, scheduler: their full state (AdamW or Prodigy, LambdaLR) is stored.
        config: the resolved training config, written as train_config.json.
        epoch: current epoch; `extra`: JSON-able (or tensor) loop state such as the number of
            micro-batches consumed, needed to put the sampler back at the same position.
        param_names: names of the optimized parameters in optimizer order; checked on load so
            optimizer state is never applied to the wrong tensors.
        keep_last: prune to the newest `keep_last` checkpoints afterwards (None/<=0: keep all).
        weights_file: where the weights go (`FULL_WEIGHTS_FILE` for a full fine-tune).
        optimizer_state: instead of `optimizer.state_dict()`, this state in the same layout (FSDP
            gathers its shards into it, so the folder does not depend on the number of processes).
    """
    parent = Path(output_dir)
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(parent)
    final = parent / checkpoint_name(step)

    tensors: dict[str, torch.Tensor] = {}
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "optimizer_class": type(optimizer).__name__,
        "param_names": list(param_names) if param_names is not None else None,
        "optimizer": _encode(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tensors,
                             "optimizer"),
        "scheduler": _encode(scheduler.state_dict(), tensors, "scheduler") if scheduler is not None else None,
        "rng": _encode(get_rng_state(), tensors, "rng"),
        "extra": _encode(extra or {}, tensors, "extra"),
    }
    lora_cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in lora_state.items()}

    # os.mkdir (not mkdtemp, which makes it 0700) so the folder gets the usual umask permissions.
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        _write_safetensors(tmp / weights_file, lora_cpu, dict(SAVED_METADATA))
        _write_json(tmp / ADAPTER_CONFIG_FILE, adapter_config)
        _write_json(tmp / TRAIN_CONFIG_FILE, config or {})
        _write_safetensors(tmp / STATE_TENSORS_FILE, tensors, None)
        _write_json(tmp / STATE_FILE, state)  # last: its presence marks a complete folder
        _fsync_dir(tmp)
        old = None
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
            old = parent / f".{final.name}.old-{os.getpid()}"
            _rename(final, old)
        _rename(tmp, final)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", final)
    if keep_last:
        prune_checkpoints(parent, keep_last)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as (step, path), oldest first. Temp folders are ignored."""
    parent = Path(output_dir)
    if not parent.is_dir():
        return []
    found = []
    for entry in parent.iterdir():
        m = _NAME_RE.match(entry.name)
        if m and entry.is_dir() and (entry / STATE_FILE).is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint folder was saved at (read from its training_state.json)."""
    return int(_read_json(Path(path) / STATE_FILE)["step"])


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None if there is none."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, never the best one (`read_best`);
    return the deleted paths."""
    if keep_last is None or keep_last <= 0:
        return []
    found = list_checkpoints(output_dir)
    best = (read_best(output_dir) or {}).get("step")
    doomed = [path for step, path in found[: max(0, len(found) - keep_last)] if step != best]
    for path in doomed:
        shutil.rmtree(path)
        logger.info("pruned checkpoint %s", path)
    return doomed


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` returns. `lora_state` is in the final key layout, on CPU."""

    path: Path
    step: int
    epoch: int
    config: dict[str, Any]
    adapter_config: dict[str, Any]
    lora_state: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"unreadable checkpoint file ({err})", path=path, fix="resume from an older checkpoint") from err


def _load_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, saved: dict[str, Any], path: Path) -> None:
    # The caller's schedule rule (warmup/max_steps/final fraction) wins over the saved one, so a
    # resumed run can extend --max_steps; the position (last_epoch, base_lrs) is restored.
    saved = dict(saved)
    saved_rules = saved.pop("lr_lambdas", None)
    current = scheduler.state_dict().get("lr_lambdas")
    if saved_rules is not None and current is not None and saved_rules != current:
        logger.warning("%s: LR schedule changed since the checkpoint (%s -> %s); using the new one", path, saved_rules, current)
    if "lr_lambdas" in scheduler.state_dict():
        saved["lr_lambdas"] = current
    scheduler.load_state_dict(saved)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
    param_names: list[str] | None = None,
    load_optimizer: Callable[[dict], None] | None = None,
) -> LoadedCheckpoint:
    """Read a checkpoint folder and restore optimizer, scheduler and RNG state in place.

    The LoRA weights are returned (not applied): load them into the model before training on.
    Raises CheckpointError for a missing/incomplete folder and UsageError when the checkpoint was
    made with another optimizer or another set of trainable parameters. `load_optimizer`, when
    given, receives the saved optimizer state in place of `optimizer.load_state_dict` (FSDP shards it).
    """
    folder = Path(path)
    weights_file = FULL_WEIGHTS_FILE if (folder / FULL_WEIGHTS_FILE).is_file() else LORA_WEIGHTS_FILE
    missing = [name for name in checkpoint_files(weights_file) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"incomplete checkpoint, missing {', '.join(missing)}",
            path=folder,
            fix="resume from another step-* folder (acetune keeps the last few)",
        )
    state = _read_json(folder / STATE_FILE)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}", path=folder)
    try:
        tensors = load_file(str(folder / STATE_TENSORS_FILE), device="cpu")
        lora_state = load_file(str(folder / weights_file), device="cpu")
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"unreadable tensors ({err})", path=folder, fix="resume from an older checkpoint") from err

    if optimizer is not None:
        saved_class = state["optimizer_class"]
        if saved_class != type(optimizer).__name__:
            raise UsageError(
                f"checkpoint {folder} was trained with {saved_class}, not {type(optimizer).__name__}",
                fix=f"resume with the same --optimizer ({saved_class.lower()})",
            )
        saved_names = state.get("param_names")
        if saved_names is not None and param_names is not None and list(param_names) != saved_names:
            raise UsageError(
                f"checkpoint {folder} trained {len(saved_names)} LoRA tensors, this run has {len(param_names)} "
                "(or in another order)",
                fix="resume with the same LoRA config and --train_lyrics_embedder setting",
            )
        (load_optimizer or optimizer.load_state_dict)(_decode(state["optimizer"], tensors))
    if scheduler is not None:
        if state.get("scheduler") is None:
            raise CheckpointError("checkpoint has no LR scheduler state", path=folder)
        _load_scheduler(scheduler, _decode(state["scheduler"], tensors), folder)
    if restore_rng:
        set_rng_state(_decode(state["rng"], tensors))

    return LoadedCheckpoint(
        path=folder,
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        config=_read_json(folder / TRAIN_CONFIG_FILE),
        adapter_config=_read_json(folder / ADAPTER_CONFIG_FILE),
        lora_state=lora_state,
        extra=_decode(state.get("extra") or {}, tensors),
    )


def is_finite_state(lora_state: dict[str, torch.Tensor]) -> bool:
    """True when every LoRA tensor is finite (the loop refuses to save a diverged state)."""
    return all(bool(torch.isfinite(t).all()) for t in lora_state.values() if t.is_floating_point())
