"""`acetune export` for ACE-Step 1.5 adapters from any trainer (`V15Family.export_lora`).

The input is read by `lora.import_15.read_adapter_15` (official peft, diffusers, Side-Step, LyCORIS,
kohya or acetune layout; scale from `.alpha`, config or flags). Outputs:

- `--format comfyui` (also chosen by `--bake_alpha`/`--write_alpha` when no `--format` is given):
  `base_model.model.` + original names; the scale baked into A and B (LoKr: into w1), or with
  `--write_alpha` a per-module `.alpha` = scale * r. Loads in ComfyUI at strength 1.0 as trained.
- `--format kohya`: the same tensors as `lora_unet_decoder_<module>.lora_down/lora_up`.
- `--format peft` (default): the diffusers layout (`transformer.` keys, peft config embedded),
  loaded by `AceStepPipeline.load_lora_weights`. LoRA only (no LoKr, no DoRA).
- `--merge --checkpoint_dir CKPT [--strength S]`: W += S * scale * B @ A in the transformer folder's
  safetensors (`lora.merge.merge_into_transformer`, as for v1). LoRA only.
- `--resize RANK` / `--resize_energy F`: SVD-resize each LoRA module first (`lora.resize.svd_resize`).
- DoRA (peft magnitude vectors): ComfyUI formats write `dora_scale` = m ‖W‖_row / ‖W + s B A‖_row
  from the base weights (`--checkpoint_dir`), which ComfyUI applies exactly at strength 1.0.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from acetune.errors import CheckpointError, UsageError
from acetune.lora import keys as lk
from acetune.lora.check import check_consistent, check_widths, weight_shapes
from acetune.lora.dora import dora_scale_for_comfyui, read_base_weights
from acetune.lora.file import save_lora_file
from acetune.lora.import_15 import ACETUNE_FAMILY_METADATA, LAYOUT_SAVED, Adapter15, read_adapter_15
from acetune.lora.resize import describe_config, svd_resize
from acetune.models.v15.layout import MODEL_INDEX_FILE, TRANSFORMER_DIR
from acetune.models.v15.schema import FAMILY_NAME
from acetune.models.v15.variant import RELEASED_WIDTHS

# Metadata of every ComfyUI-layout file we write: read back, its scale is known to be baked / in .alpha.
logger = logging.getLogger(__name__)
COMFYUI_METADATA = {"format": "pt", ACETUNE_FAMILY_METADATA: FAMILY_NAME}


def resolve_transformer_dir(checkpoint_dir: str | Path) -> Path:
    """`transformer/` of a diffusers 1.5 folder, or the transformer folder itself."""
    root = Path(checkpoint_dir)
    for cand in (root / TRANSFORMER_DIR, root):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors*")):
            return cand
    raise CheckpointError("no ACE-Step 1.5 transformer folder found", path=root,
                          fix=f"pass the diffusers folder holding {MODEL_INDEX_FILE} and {TRANSFORMER_DIR}/")


def trained_checkpoint(path: Path) -> str | None:
    """The `checkpoint_dir` a `train_config.json` beside the adapter names, if that folder still exists."""
    try:
        named = json.loads((path.parent / "train_config.json").read_text(encoding="utf-8")).get("checkpoint_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return named if named and Path(named).is_dir() else None


def base_weights(adapter: Adapter15, checkpoint_dir) -> dict[str, torch.Tensor]:
    """{original module: base weight (out, in)}; CheckpointError when a module is missing or does not fit."""
    folder = resolve_transformer_dir(checkpoint_dir)
    names = {m: lk.v15_diffusers_module(m) + ".weight" for m in adapter.modules}
    found = read_base_weights(folder, list(names.values()))
    out = {}
    for module, name in names.items():
        w = found[name]
        shape = delta(adapter, module).shape
        if tuple(w.shape) != tuple(shape):
            raise CheckpointError(f"{module}: base weight {tuple(w.shape)} does not fit the adapter's {tuple(shape)}",
                                  path=folder, fix="pass the base checkpoint the adapter was trained on")
        out[module] = w
    return out


def delta_shape(parts: dict) -> tuple[int, int]:
    """(out, in) of a module's delta, from the factor shapes alone."""
    if lk.LORA_A in parts:
        return parts[lk.LORA_B].shape[0], parts[lk.LORA_A].shape[1]
    w1 = (parts["lokr_w1"].shape if "lokr_w1" in parts else (parts["lokr_w1_a"].shape[0], parts["lokr_w1_b"].shape[1]))
    w2 = (parts["lokr_w2"].shape if "lokr_w2" in parts else (parts["lokr_w2_a"].shape[0], parts["lokr_w2_b"].shape[1]))
    return w1[0] * w2[0], w1[1] * w2[1]


def delta(adapter: Adapter15, module: str) -> torch.Tensor:
    """The source trainer's weight delta (before DoRA's normalisation): s·B@A or s·kron(w1, w2), float64."""
    p = {k: v.double() for k, v in adapter.modules[module].items()}
    s = adapter.scales[module]
    if lk.LORA_A in p:
        return s * (p[lk.LORA_B] @ p[lk.LORA_A])
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    return s * torch.kron(w1, w2)


def comfyui_tensors(adapter: Adapter15, style: str, write_alpha: bool,
                    base: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The ComfyUI 1.5 file: `base_model.model.<module>` (style "comfyui") or `lora_unet_decoder_<module_>` (kohya)."""
    out = {}
    for module in sorted(adapter.modules):
        parts, s = adapter.modules[module], adapter.scales[module]
        if style == "kohya":
            prefix, down, up = lk.V15_KOHYA_PREFIX + module.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"
        else:
            prefix, down, up = lk.V15_PEFT_PREFIX + module, ".lora_A.weight", ".lora_B.weight"
        if adapter.kind == "lokr":
            for name, t in parts.items():  # kron is linear in w1: the scale goes there
                out[f"{prefix}.{name}"] = (t.float() * s if name in ("lokr_w1", "lokr_w1_a") else t.float()).contiguous()
            continue
        a, b = parts[lk.LORA_A].float(), parts[lk.LORA_B].float()
        if write_alpha:
            out[prefix + ".alpha"] = torch.tensor(s * a.shape[0], dtype=torch.float32)
        else:  # (sqrt|s| B)(sign(s) sqrt|s| A) = s B A
            root = math.sqrt(abs(s))
            a, b = a * (math.copysign(root, s)), b * root
        out[prefix + down], out[prefix + up] = a.contiguous(), b.contiguous()
        if lk.MAGNITUDE in parts:
            out[f"{prefix}.{lk.DORA_SCALE}"] = dora_scale_for_comfyui(parts[lk.MAGNITUDE], base[module],
                                                                        delta(adapter, module))
        elif lk.DORA_SCALE in parts:  # already ComfyUI's form
            out[f"{prefix}.{lk.DORA_SCALE}"] = parts[lk.DORA_SCALE].float().reshape(-1, 1).contiguous()
    return out


def lora_modules(adapter: Adapter15) -> dict:
    """{diffusers module path: `lora.file.LoraModule`(a, b, scale)} of a LoRA adapter."""
    return {lk.v15_diffusers_module(m): mod for m, mod in _modules_by_original(adapter).items()}


def diffusers_config(adapter: Adapter15) -> dict:
    """The peft config for the diffusers file: the trained one for our own saved layout, else rebuilt from scales."""
    if adapter.layout == LAYOUT_SAVED and adapter.config is not None:
        return json.loads(json.dumps(adapter.config))
    cfg = describe_config(lora_modules(adapter), None)
    cfg.update(lora_dropout=0.0, bias="none", init_lora_weights=True)
    return cfg


def write_diffusers(adapter: Adapter15, out: Path) -> Path:
    """`AceStepPipeline.save_lora_weights` to `out` (a .safetensors file, or a folder to hold one)."""
    from diffusers import AceStepPipeline

    folder, name = (out.parent, out.name) if out.suffix == ".safetensors" else (out, lk.LORA_WEIGHTS_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for module, parts in adapter.modules.items():
        for kind in (lk.LORA_A, lk.LORA_B):
            state[lk.saved_key(lk.v15_diffusers_module(module), kind)] = parts[kind].float().contiguous()
    AceStepPipeline.save_lora_weights(folder, transformer_lora_layers=state, weight_name=name,
                                      transformer_lora_adapter_metadata=diffusers_config(adapter))
    return folder / name


def _refusals(args, adapter: Adapter15, fmt: str) -> list[str]:
    what = "LoKr" if adapter.kind == "lokr" else "DoRA" if adapter.dora else "LoRA"
    checks = (
        ((args.resize is not None or args.resize_energy is not None) and what != "LoRA",
         f"--resize cannot keep a {what} exact (SVD-resize applies to plain LoRA)"),
        (fmt == "peft" and args.bake_alpha,
         "--bake_alpha with --format peft: the diffusers layout carries its scale in the embedded config; "
         "baking is for ComfyUI: use --format comfyui"),
        (fmt == "peft" and args.write_alpha, "--write_alpha writes ComfyUI .alpha tensors: add --format comfyui"),
        (fmt == "peft" and not args.merge and what != "LoRA",
         f"diffusers loads plain LoRA only; export this {what} with --format comfyui"),
        (args.write_alpha and what == "LoKr", "--write_alpha: ComfyUI ignores .alpha on undecomposed LoKr factors; "
                                              "drop it (the scale is then baked into lokr_w1)"),
        (args.merge and what != "LoRA", f"--merge: merging a {what} is not available; export it with --format comfyui"),
        (adapter.dora and fmt != "peft" and not args.checkpoint_dir and any(
            lk.MAGNITUDE in p for p in adapter.modules.values()),
         "DoRA for ComfyUI needs the base weights (ComfyUI normalises by the base row norm): "
         "add --checkpoint_dir with the base checkpoint"),
    )
    return [msg for bad, msg in checks if bad]


def export(args, path: Path, default_output) -> int:
    """The `acetune export` command for a 1.5 adapter (`args`: `stages.export.Args`; `default_output(suffix, ext)`)."""
    adapter = read_adapter_15(path, args.lora_config_path, args.assume_baked)
    if not args.checkpoint_dir and not args.merge:
        args.checkpoint_dir = trained_checkpoint(path)  # a step folder names its base (widths, DoRA)
    fmt = args.format or ("comfyui" if args.bake_alpha or args.write_alpha else "peft")
    problems = _refusals(args, adapter, fmt)
    if problems:
        raise UsageError("; ".join(problems), path=path)
    size = f" (1.5 {RELEASED_WIDTHS[adapter.width]})" if adapter.width in RELEASED_WIDTHS else ""
    what = f"{'LoKr' if adapter.kind == 'lokr' else 'DoRA' if adapter.dora else 'LoRA'} ({len(adapter.modules)} " \
           f"modules, decoder width {adapter.width}{size}, {adapter.layout}, scale from {adapter.scale_source})"
    if args.resize is not None or args.resize_energy is not None:
        resize(adapter, args.resize, args.resize_energy)
    if args.merge:
        return _merge(args, adapter, what, default_output)
    base = None
    if args.checkpoint_dir and any(lk.MAGNITUDE in p for p in adapter.modules.values()):
        base = base_weights(adapter, args.checkpoint_dir)  # DoRA: dora_scale needs the values
    else:
        pairs = {lk.v15_diffusers_module(m): ((1, cols), (rows, 1)) for m, (rows, cols) in
                 ((m, delta_shape(adapter.modules[m])) for m in adapter.modules)}  # check_widths' (A, B) shapes
        check_consistent(pairs, adapter.path)
        if args.checkpoint_dir:  # widths only, from the safetensors headers
            folder = resolve_transformer_dir(args.checkpoint_dir)
            check_widths(pairs, weight_shapes(folder), adapter.path, folder)
        elif adapter.width not in RELEASED_WIDTHS:  # may be right for its own model: say it, go on
            logger.warning("%s: the LoRA's decoder width is %s, which no released ACE-Step 1.5 model has (%s); "
                           "pass --checkpoint_dir to check it against the model it was trained on", adapter.path,
                           adapter.width, ", ".join(f"{w} {n}" for w, n in RELEASED_WIDTHS.items()))
    if fmt == "peft":
        out = Path(args.output_name) if args.output_name else default_output("_diffusers", "")
        target = out if out.suffix == ".safetensors" else out / lk.LORA_WEIGHTS_FILE
        if target.exists() and not args.overwrite:
            raise UsageError("exists already", path=target, fix="pass --overwrite to replace it, or choose another "
                                                                "--output_name")
        written = write_diffusers(adapter, out)
        print(f"read {what}; wrote {written} (diffusers layout: AceStepPipeline.load_lora_weights)")
        return 0
    out = Path(args.output_name) if args.output_name else default_output(
        f"{'_alpha' if args.write_alpha else ''}_{fmt}", ".safetensors")
    if out.suffix != ".safetensors":
        out = out / "pytorch_lora_weights_comfyui.safetensors"
    if out.resolve() == adapter.path.resolve():
        raise UsageError("--output_name is the input file", path=out, fix="choose another output name")
    save_lora_file(out, comfyui_tensors(adapter, fmt, args.write_alpha, base), COMFYUI_METADATA, args.overwrite)
    scales = sorted({round(s, 6) for s in adapter.scales.values()})
    how = ".alpha per module" if args.write_alpha else f"scale {', '.join(f'{s:g}' for s in scales)} baked"
    print(f"read {what}; wrote {out} ({fmt} keys for ComfyUI, {how}"
          f"{', dora_scale from the base weights' if adapter.dora else ''}): load at strength 1.0")
    return 0


def resize(adapter: Adapter15, rank: int | None, energy: float | None) -> None:
    """SVD-resize every LoRA module in place (`lora.resize.svd_resize`), printing one line per module."""
    rslora = bool((adapter.config or {}).get("use_rslora", False))
    kept_all = []
    print(f"{'module':<40} {'rank':>9}  kept energy")
    for module, (old, new, kept) in sorted(
            (m, (mod, *svd_resize(mod, rank, energy, rslora))) for m, mod in _modules_by_original(adapter).items()):
        adapter.modules[module] = {lk.LORA_A: new.a, lk.LORA_B: new.b}
        adapter.scales[module] = new.scale
        kept_all.append(kept)
        print(f"{module:<40} {old.rank:>4} -> {new.rank:<3} {kept:.6f}")
    adapter.config = None  # ranks changed: the diffusers config is rebuilt from the new scales
    print(f"resized {len(kept_all)} modules: kept energy min {min(kept_all):.6f}, "
          f"mean {sum(kept_all) / len(kept_all):.6f}; relative delta error = sqrt(1 - kept)")


def _modules_by_original(adapter: Adapter15) -> dict:
    from acetune.lora.file import LoraModule

    return {m: LoraModule(p[lk.LORA_A].float(), p[lk.LORA_B].float(), adapter.scales[m])
            for m, p in adapter.modules.items()}


def _merge(args, adapter: Adapter15, what: str, default_output) -> int:
    from acetune.lora.merge import merge_into_transformer

    src = resolve_transformer_dir(args.checkpoint_dir)
    out = Path(args.output_name) if args.output_name else default_output("_merged", "") / TRANSFORMER_DIR
    if out.resolve() == src.resolve():
        raise UsageError("--output_name is the base transformer folder", path=out, fix="choose a new folder")
    if out.exists() and not args.overwrite:
        raise UsageError("exists already", path=out, fix="pass --overwrite to replace it, or choose a new folder")
    n = merge_into_transformer(lora_modules(adapter), src, out, args.strength)
    print(f"read {what}; merged {n} modules at strength {args.strength:g} into {out} "
          f"(replace the checkpoint's {TRANSFORMER_DIR}/ with it)")
    return 0
