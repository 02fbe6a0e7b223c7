"""`acetune export --extract_lora --base BASE --tuned TUNED --rank R | --energy E`, and
`acetune export --comfyui_checkpoint --input_name TRANSFORMER` (a full fine-tune as one ComfyUI file).

A full fine-tune shared as a small LoRA: `lora/extract.py` takes the truncated SVD of every changed
linear weight; this writes it in the family's ComfyUI layout with scale 1 (loads at strength 1.0:
v1 `diffusion_model.<module>`, 1.5 `base_model.model.<original 1.5 module>`) and prints the kept
energy per module and overall. BASE / TUNED: a transformer folder (diffusers layout), a checkpoint
folder holding one, or a .safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from acetune.errors import InputError, UsageError
from acetune.layout import V1_MARKER, V1_TRANSFORMER_DIR
from acetune.lora import keys as lk
from acetune.lora.extract import extract_lora, summary_lines
from acetune.lora.file import save_lora_file

V15_TRANSFORMER_DIR = "transformer"  # the diffusers AceStepPipeline folder's DiT


def extract_problems(args) -> list[str]:
    """Flag problems of `--extract_lora` (and of its flags given without it), for `export.Args`."""
    if not args.extract_lora:
        if not args.input_name:
            return ["--input_name is required (or --extract_lora --base --tuned)"]
        if args.base or args.tuned or args.rank is not None or args.energy is not None:
            return ["--base, --tuned, --rank and --energy belong to --extract_lora"]
        return []
    checks = ((not args.base or not args.tuned, "--extract_lora needs --base and --tuned"),
              ((args.rank is None) == (args.energy is None), "--extract_lora needs exactly one of --rank R or --energy E"),
              (args.rank is not None and args.rank < 1, "--rank must be >= 1"),
              (args.energy is not None and not 0.0 < args.energy <= 1.0, "--energy must be in (0, 1], e.g. 0.9"),
              (bool(args.input_name), "--extract_lora reads --base and --tuned, not --input_name"))
    return [message for bad, message in checks if bad]


def weights_path(given: str, flag: str) -> Path:
    """The folder or file holding the transformer weights for `--base` / `--tuned`."""
    path = Path(given)
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if path.is_dir():
        for cand in (path / V1_TRANSFORMER_DIR, path / V15_TRANSFORMER_DIR, path):
            if cand.is_dir() and any(cand.glob("*.safetensors")):
                return cand
    raise InputError(f"{flag} {given}: no transformer weights (.safetensors) there; give the transformer folder, "
                     "the checkpoint folder holding it, or a .safetensors file")


def _keys(path: Path) -> set[str]:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            keys.update(sf.keys())
    return keys


def family_of(path: Path) -> str:
    """"v1" or "1.5", from the weight names."""
    keys = _keys(path)
    if V1_MARKER in keys:
        return "v1"
    if any(k.startswith("layers.") and ".self_attn." in k for k in keys):
        return "1.5"
    raise InputError(f"{path}: neither an ACE-Step v1 nor an ACE-Step 1.5 transformer (no {V1_MARKER}, "
                     "no layers.N.self_attn); give the transformer of a full fine-tune")


def comfyui_state(modules: dict, family: str) -> dict:
    """`{key: tensor}` in the family's ComfyUI LoRA layout, scale 1 (no `.alpha`)."""
    if family == "v1":
        return lk.build_state_dict({m: {lk.LORA_A: mod.a.contiguous(), lk.LORA_B: mod.b.contiguous()}
                                    for m, mod in modules.items()}, lk.STYLE_COMFYUI)
    from acetune.models.v15.adapters import COMFYUI_PREFIX, original_name

    return {COMFYUI_PREFIX + original_name(lk.format_key(m, kind, lk.STYLE_BARE)): t.contiguous()
            for m, mod in sorted(modules.items()) for kind, t in ((lk.LORA_A, mod.a), (lk.LORA_B, mod.b))}


def run_extract(args) -> int:
    """Extract, write, print the per-module table and the summary."""
    if not args.base or not args.tuned:
        raise UsageError("--extract_lora needs --base (the model before fine-tuning) and --tuned (after)")
    base, tuned = weights_path(args.base, "--base"), weights_path(args.tuned, "--tuned")
    family = family_of(base)
    if family_of(tuned) != family:
        raise InputError(f"--tuned {args.tuned} is another model family than --base {args.base}",
                         fix="give the base checkpoint the fine-tune was trained from")
    modules, report = extract_lora(base, tuned, rank=args.rank, energy=args.energy)
    out = Path(args.output_name) if args.output_name else (
        (tuned if tuned.is_dir() else tuned.parent).parent
        / f"extracted_lora_{f'r{args.rank}' if args.rank is not None else f'e{args.energy:g}'}_comfyui.safetensors")
    if out.suffix != ".safetensors":
        out = out / lk.LORA_WEIGHTS_FILE
    config = {"r": max(report.ranks.values()), "lora_alpha": 1.0, "use_rslora": False,
              "rank_pattern": dict(sorted(report.ranks.items())), "target_modules": sorted(modules),
              "acetune_extracted": {"base": str(args.base), "kept_energy": report.total_energy}}
    metadata = {**lk.SAVED_METADATA, lk.ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
    save_lora_file(out, comfyui_state(modules, family), metadata, args.overwrite)
    print(f"{'module':<56} {'rank':>5}  kept energy")
    for name in sorted(modules):
        print(f"{name:<56} {report.ranks[name]:>5}  {report.kept_energy[name]:.6f}")
    for line in summary_lines(report):
        print(line)
    print(f"wrote {len(modules)} modules (ComfyUI keys, ACE-Step {family}, scale baked: load at strength 1.0) to {out}")
    return 0


def run_comfyui_checkpoint(args) -> int:
    """Write the single-file ComfyUI checkpoint of a transformer folder: v1 from the folder alone
    (`training/full.py`), 1.5 into the user's ComfyUI file (`models/v15/export_comfyui.py`)."""
    from acetune.training.full import write_comfyui_checkpoint

    folder = weights_path(args.input_name, "--input_name")
    if folder.is_file():
        raise InputError(f"--input_name {args.input_name}: give the transformer folder, not a single file")
    out = Path(args.output_name) if args.output_name else folder.parent / f"{folder.name}_comfyui.safetensors"
    if out.exists() and not args.overwrite:
        raise UsageError("exists already", path=out, fix="pass --overwrite to replace it, or choose another --output_name")
    family = family_of(folder)
    if family == "v1":
        if args.comfyui_base:
            raise UsageError("--comfyui_base is for ACE-Step 1.5; a v1 file is written from the folder alone",
                             fix="drop --comfyui_base")
        written = write_comfyui_checkpoint(folder, out)
        print(f"wrote {written} (ComfyUI: models/diffusion_models/, 'Load Diffusion Model')")
        return 0
    from acetune.models.v15.export_comfyui import FIX_BASE, write_comfyui_checkpoint_15

    if not args.comfyui_base:
        raise UsageError("an ACE-Step 1.5 file also needs --comfyui_base (its condition encoder and audio tokenizer "
                         "are not in the transformer folder)", fix=FIX_BASE)
    base = Path(args.comfyui_base)
    if not base.is_file():
        raise InputError("--comfyui_base: not found", path=base, fix=FIX_BASE)
    if out.resolve() == base.resolve():
        raise UsageError("--output_name is the --comfyui_base file", path=out, fix="write to a new file")
    s = write_comfyui_checkpoint_15(folder, base, out)
    where = "models/checkpoints/, 'Load Checkpoint'" if s["prefix"] else "models/diffusion_models/, 'Load Diffusion Model'"
    print(f"wrote {out} ({s['bytes'] / 1e9:.2f} GB): {s['replaced']} decoder tensors from {folder} "
          f"({'/'.join(s['dtypes'])}, {s['layers']} layers, width {s['width']}), {s['kept']} tensors kept from "
          f"{base.name}; ComfyUI: {where}")
    return 0
