"""A run folder belongs to one run: no silent mixing of two runs, no silent change on resume.

`claim(output_dir, ...)` refuses to start a new run in a folder holding another run's checkpoints
(unless `--resume`, or `--overwrite`, which deletes acetune's own files there and nothing else).
`changes(saved, current)` lists the hyper-parameters a `--resume` would change; train refuses them
unless `--allow_changes`, and then prints them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from acetune.errors import CheckpointError, UsageError
from acetune.training import checkpoint as ckpt

# Flags that do not change what the model learns (paths, logging, saving, how long to run, devices,
# validation renders, ignored compatibility flags). Every other resolved flag is a hyper-parameter.
# --max_steps / --epochs may grow on resume on purpose (the LR schedule is recomputed for the new length).
NOT_HYPER_PARAMETERS = frozenset({
    "dataset_path", "checkpoint_dir", "model_family", "lora_config_path", "output_dir", "exp_name", "max_steps", "epochs",
    "num_workers", "device", "gradient_checkpointing", "memory_budget_gb", "compile", "every_n_train_steps", "save_last",
    "resume", "resume_from",
    "logger", "logger_dir", "overfit_check", "init_lora", "allow_changes", "overwrite", "every_plot_step",
    "val_check_interval", "devices", "num_nodes", "reload_dataloaders_every_n_epochs",
    "revision", "offline", "checkpoint_source",  # where the checkpoint came from, like checkpoint_dir (docs/hub.md)
})
_VALIDATION_PREFIXES = ("validation_", "val_", "eval", "clap")
# What acetune writes into a run folder; --overwrite deletes these and leaves anything else alone.
RUN_FILES = ("logs", "validation", "metrics.jsonl")


def claim(output_dir: Path, *, resuming: bool, overwrite: bool, logs_inside: bool, delete: bool = True) -> list[Path]:
    """Check (or, with overwrite, clear) `output_dir` for a new run; returns the deleted paths.
    `delete=False` (DDP ranks other than 0) only checks."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError("--output_dir is an existing file, not a folder", path=output_dir,
                         fix="pass a folder name (new, or the run's own folder)")
    found = ckpt.list_checkpoints(output_dir)
    if resuming:
        if overwrite:
            raise UsageError("--overwrite and --resume contradict each other", fix="choose one")
        return []
    if not found:
        return []
    if not overwrite:
        raise UsageError(f"holds another run's checkpoints (newest {found[-1][1].name})", path=output_dir,
                         fix="add --resume to continue that run, --overwrite to delete its checkpoints, "
                             "or choose another --output_dir")
    if not delete:
        return []
    doomed = [p for _, p in found]
    doomed += [output_dir / name for name in RUN_FILES if (name != "logs" or logs_inside)]
    doomed += [p for p in output_dir.iterdir() if p.name.startswith(".step-")]  # temp folders of a crashed save
    deleted = []
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        deleted.append(path)
    return deleted


def _is_hyper_parameter(name: str) -> bool:
    return name not in NOT_HYPER_PARAMETERS and not name.startswith(_VALIDATION_PREFIXES)


_BATCH_SPLIT = ("batch_size", "accumulate_grad_batches", "processes")


def _same_global_batch(saved: dict, current: dict) -> bool:
    """True when processes x batch x accumulation is unchanged: another number of processes (N -> M)
    with the same samples per optimizer step is not a hyper-parameter change."""
    def total(config):
        return config.get("processes", 1) * config.get("batch_size", 1) * config.get("accumulate_grad_batches", 1)
    return "processes" in saved and "processes" in current and total(saved) == total(current)


def changes(saved: dict, current: dict, saved_adapter: dict | None = None, adapter: dict | None = None) -> list[str]:
    """`name: old -> new` for each hyper-parameter (and LoRA config entry) that differs.

    Keys missing on one side (a flag added by a newer acetune) are not a change."""
    same = _same_global_batch(saved, current)
    found = [f"--{k} {saved[k]!r} -> {current[k]!r}" for k in sorted(set(saved) & set(current))
             if _is_hyper_parameter(k) and saved[k] != current[k] and not (same and k in _BATCH_SPLIT)]
    if saved_adapter is not None and adapter is not None:
        found += [f"LoRA {k} {saved_adapter[k]!r} -> {adapter[k]!r}"
                  for k in sorted(set(saved_adapter) & set(adapter)) if saved_adapter[k] != adapter[k]]
    return found


def check_resume(folder: Path, current: dict, adapter: dict, *, allow: bool) -> list[str]:
    """The changes from checkpoint `folder`'s config; raises UsageError for any unless `allow`."""
    saved, saved_adapter = _read(folder / ckpt.TRAIN_CONFIG_FILE), _read(folder / ckpt.ADAPTER_CONFIG_FILE)
    found = changes(saved, current, saved_adapter, adapter)
    if found and not allow:
        raise UsageError(f"--resume would change the run's settings: {'; '.join(found)}", path=folder,
                         fix="resume with the same flags, or add --allow_changes to accept these changes")
    return found


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # an incomplete checkpoint: loading it names what is missing
    except (OSError, ValueError) as err:
        raise CheckpointError(f"unreadable checkpoint file ({err})", path=path,
                              fix="resume from an older checkpoint (--resume_from)") from None
    return value if isinstance(value, dict) else {}
