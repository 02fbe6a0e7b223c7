"""Merge a LoRA into a base transformer folder's safetensors: W += strength · scale · B @ A (both families)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from acetune.errors import CheckpointError
from acetune.layout import CONFIG_FILE, V1_TRANSFORMER_DIR, WEIGHTS_FILE, WEIGHTS_INDEX_FILE
from acetune.lora import keys as lk
from acetune.lora.file import LoraModule
from acetune.progress import progress


def resolve_transformer_dir(checkpoint_dir: str) -> Path:
    """The `ace_step_transformer/` folder inside `checkpoint_dir`, or `checkpoint_dir` itself."""
    root = Path(checkpoint_dir)
    for cand in (root / V1_TRANSFORMER_DIR, root):
        if (cand / CONFIG_FILE).is_file() and ((cand / WEIGHTS_FILE).is_file() or (cand / WEIGHTS_INDEX_FILE).is_file()):
            return cand
    raise CheckpointError(f"no transformer found (need {CONFIG_FILE} and {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE})",
                          path=root, fix=f"pass the checkpoint folder holding {V1_TRANSFORMER_DIR}/")


def merge_into_transformer(modules: dict[str, LoraModule], src: Path, out: Path, strength: float = 1.0) -> int:
    """Write `out` = `src` with W += strength * scale * B @ A on every targeted `<module>.weight`.

    The sum is done in fp32 and cast back to the stored dtype; shards, index and config are kept as
    they are. `out` is built in a temp folder and renamed into place. Returns the modules merged.
    """
    if (src / WEIGHTS_INDEX_FILE).is_file():
        index = json.loads((src / WEIGHTS_INDEX_FILE).read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    else:
        shards = [WEIGHTS_FILE]
    where = {}
    for shard in shards:
        with safe_open(str(src / shard), framework="pt") as f:
            where.update({k: shard for k in f.keys()})
    targets = {f"{m}.weight": mod for m, mod in modules.items()}
    missing = sorted(set(targets) - set(where))
    if missing:
        raise CheckpointError(f"{len(missing)} LoRA modules are not in this transformer (first: {missing[0]!r})",
                              path=src, fix="merge into the model the LoRA was trained on")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for item in src.iterdir():
            if item.is_file() and item.name not in shards:
                shutil.copy2(item, tmp / item.name)
        for shard in progress(shards, desc="merge", unit="shard"):
            with safe_open(str(src / shard), framework="pt") as f:
                metadata = f.metadata() or dict(lk.SAVED_METADATA)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            for key in [k for k in tensors if k in targets]:
                w, mod = tensors[key], targets[key]
                if tuple(w.shape) != (mod.b.shape[0], mod.a.shape[1]):
                    raise CheckpointError(f"{key}: weight {tuple(w.shape)} does not fit LoRA "
                                          f"B {tuple(mod.b.shape)} @ A {tuple(mod.a.shape)}", path=src / shard,
                                          fix="merge into the model the LoRA was trained on")
                delta = mod.b.float() @ mod.a.float()
                tensors[key] = (w.float() + (strength * mod.scale) * delta).to(w.dtype)
            save_file(tensors, str(tmp / shard), metadata=metadata)
            del tensors
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(targets)
