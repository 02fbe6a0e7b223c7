"""The best checkpoint of a run by held-out validation loss: one small JSON record in the run folder.

`training/val_loss.py` writes it; `checkpoint.prune_checkpoints` never deletes the step it names;
`acetune train`'s summary and `acetune evaluate` name it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BEST_FILE = "best_checkpoint.json"  # {"step", "val_loss", "step0_val_loss"} in the run folder


def read_best(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The best-checkpoint record of a run (step None until a step beats nothing yet), or None."""
    path = Path(output_dir) / BEST_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def write_best(output_dir: str | os.PathLike, step: int | None, val_loss: float | None,
               step0_val_loss: float | None = None) -> None:
    """Record `step` as the best checkpoint (protected from `prune_checkpoints`), atomically."""
    path = Path(output_dir) / BEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "val_loss": val_loss, "step0_val_loss": step0_val_loss}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def forget_best_after(output_dir: str | os.PathLike, step: int | None) -> None:
    """On a resume from `step`, a best record from a later step is void (those steps are trained again);
    on a fresh run (`step` None) any record goes."""
    best = read_best(output_dir)
    if best is None:
        return
    if step is None:
        (Path(output_dir) / BEST_FILE).unlink()
    elif best.get("step") is not None and best["step"] > step:
        write_best(output_dir, None, None, step0_val_loss=best.get("step0_val_loss"))
