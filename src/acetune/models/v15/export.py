"""`acetune export` for adapters trained on ACE-Step 1.5 (`V15Family.export_lora`).

- `--format peft` (default): the diffusers layout, loaded by `AceStepPipeline.load_lora_weights`.
- `--format comfyui`: the ComfyUI 1.5 layout (`base_model.model.` + original names), scale baked;
  with `--write_alpha` the factors are kept and a per-module `.alpha` = scale * r is written
  (ComfyUI applies alpha / r; LoRA only: ComfyUI reads a LoKr `.alpha` only for decomposed factors).
- `--merge --checkpoint_dir CKPT [--strength S]`: W += S * scale * B @ A in the 1.5 transformer
  folder's safetensors, at state-dict level (`stages.export.merge_into_transformer`, as for v1);
  the result is a `transformer/` folder that replaces the checkpoint's own. LoRA only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from acetune.errors import CheckpointError, UsageError
from acetune.models.v15.adapters import (
    COMFYUI_PREFIX,
    export_trained_lora,
    original_name,
    read_trained_lora,
)
from acetune.models.v15.layout import MODEL_INDEX_FILE, TRANSFORMER_DIR


def _is_lokr(config) -> bool:
    return not hasattr(config, "lora_alpha")


def lora_modules(state: dict[str, torch.Tensor], config) -> dict:
    """Saved-layout LoRA state -> {module path: `lora_file.LoraModule`(a, b, peft scale)}."""
    from acetune.lora.file import LoraModule
    from acetune.models.v15.adapters import adapter_scale

    scale = adapter_scale(config)
    out = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            out[module] = LoraModule(a.float(), state[f"{module}.lora_B.weight"].float(), scale)
    return out


def save_comfyui_with_alpha(state: dict[str, torch.Tensor], path: Path, config) -> Path:
    """ComfyUI 1.5 layout with A and B as trained and `<module>.alpha` = scale * r (ComfyUI: alpha / r)."""
    from safetensors.torch import save_file

    out = {}
    for module, mod in lora_modules(state, config).items():
        prefix = COMFYUI_PREFIX + original_name(module + ".")[:-1]  # original_name needs the dot after the name
        out[f"{prefix}.lora_A.weight"] = mod.a.contiguous()
        out[f"{prefix}.lora_B.weight"] = mod.b.contiguous()
        out[f"{prefix}.alpha"] = torch.tensor(mod.scale * mod.rank, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(out, str(tmp), metadata={"format": "pt", "acetune_family": "acestep15"})
    os.replace(tmp, path)
    return path


def resolve_transformer_dir(checkpoint_dir: str | Path) -> Path:
    """`transformer/` of a diffusers 1.5 folder, or the transformer folder itself."""
    root = Path(checkpoint_dir)
    for cand in (root / TRANSFORMER_DIR, root):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors*")):
            return cand
    raise CheckpointError("no ACE-Step 1.5 transformer folder found", path=root,
                          fix=f"pass the diffusers folder holding {MODEL_INDEX_FILE} and {TRANSFORMER_DIR}/")


def export(args, path: Path) -> int:
    """The `acetune export` command for a 1.5 step folder / saved-layout file (`args`: `stages.export.Args`)."""
    unsupported = [flag for flag, on in (("--resize", args.resize is not None or args.resize_energy is not None),
                                         ("--format kohya", args.format == "kohya")) if on]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)}: not available for ACE-Step 1.5 adapters",
                         fix="use --format peft (diffusers) or --format comfyui")
    state, config = read_trained_lora(path)
    kind = "LoKr" if _is_lokr(config) else "LoRA"
    if args.merge:
        return _merge(args, path, state, config, kind)
    if args.write_alpha:
        if args.format != "comfyui":
            raise UsageError("--write_alpha writes ComfyUI .alpha tensors; the diffusers layout carries its "
                             "scale in the embedded peft config", fix="add --format comfyui, or drop --write_alpha")
        if kind == "LoKr":
            raise UsageError("--write_alpha: ComfyUI ignores .alpha on undecomposed LoKr factors",
                             fix="drop --write_alpha (the scale is then baked into lokr_w1)")
        out = Path(args.output_name) if args.output_name else path.parent.with_name(
            path.parent.name + "_alpha_comfyui.safetensors")
        if out.suffix != ".safetensors":
            out = out / "pytorch_lora_weights_comfyui.safetensors"
        save_comfyui_with_alpha(state, out, config)
        print(f"wrote {out} (ComfyUI 1.5 keys, factors as trained, .alpha per module)")
        return 0
    fmt = "comfyui" if args.format == "comfyui" else "diffusers"
    if fmt == "diffusers" and kind == "LoKr":
        raise UsageError("diffusers loads LoRA only; a LoKr exports in the ComfyUI layout",
                         fix="add --format comfyui (acetune generate --lora applies that file too)")
    default = path.parent.with_name(path.parent.name + ("_comfyui.safetensors" if fmt == "comfyui" else "_diffusers"))
    out = export_trained_lora(path, Path(args.output_name) if args.output_name else default, fmt)
    print(f"wrote {out} ({'ComfyUI 1.5 keys, scale baked' if fmt == 'comfyui' else 'diffusers layout'})")
    return 0


def _merge(args, path: Path, state, config, kind: str) -> int:
    from acetune.stages.export import merge_into_transformer

    if kind == "LoKr":
        raise UsageError("--merge: merging a LoKr into the transformer is not available yet",
                         fix="export it with --format comfyui; `acetune generate --lora` applies it")
    src = resolve_transformer_dir(args.checkpoint_dir)
    out = Path(args.output_name) if args.output_name else path.parent.with_name(path.parent.name + "_merged") / TRANSFORMER_DIR
    if out.resolve() == src.resolve():
        raise UsageError("--output_name is the base transformer folder", path=out, fix="choose a new folder")
    modules = lora_modules(state, config)
    n = merge_into_transformer(modules, src, out, args.strength)
    print(f"merged {n} LoRA modules at strength {args.strength:g} into {out} (scale "
          f"{next(iter(modules.values())).scale:g}; replace the checkpoint's {TRANSFORMER_DIR}/ with it)")
    return 0
