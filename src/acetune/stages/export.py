"""Export a trained LoRA: bake alpha, write ComfyUI keys or .alpha tensors, SVD-resize, or merge.

A LoRA's delta on module W is `scale * B @ A` (peft: scale = lora_alpha / r, or lora_alpha / sqrt(r)
with rsLoRA). ComfyUI ignores adapter_config.json and rsLoRA: it applies `B @ A` (times alpha / r when
a `.alpha` tensor exists). So for ComfyUI at strength 1.0 either bake the scale into A and B (the
woct0rdho fork's `bake_alpha_in_lora.py`: both times sqrt(scale)) or write `.alpha = scale * r`.
The scale is read from, in order: `.alpha` tensors in the file, `--lora_config_path`, the config
diffusers embeds in the file's metadata, `adapter_config.json` next to the file, `--assume_baked`.

ACE-Step 1.5 adapters (recognised by their key names, any trainer's layout) go to `models/v15/export.py`.
DoRA: a ComfyUI-bound export writes `dora_scale` from the base weights (`--checkpoint_dir`, `lora/dora.py`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from acetune import hub
from acetune.cli import arg
from acetune.errors import CheckpointError, InputError, UsageError
from acetune.layout import V1_TRANSFORMER_DIR
from acetune.lora import keys as lk
from acetune.lora.check import check_consistent, check_finite, check_widths, weight_shapes
from acetune.lora.dora import with_comfyui_dora_scale
from acetune.lora.file import (
    NO_SCALE_BAKED,
    NO_SCALE_ERROR,
    LoraModule,
    read_adapter_config,
    read_lora,
    save_lora_file,
)
from acetune.lora.import_15 import looks_like_v15, resolve_adapter_file
from acetune.lora.merge import merge_into_transformer, resolve_transformer_dir
from acetune.lora.resize import describe_config, svd_resize

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  # ComfyUI, strength 1.0 reproduces training (alpha baked into A and B):
  acetune export --input_name ckpt/epoch=3-step=400_lora --format comfyui
  # the fork's script, same flags:
  python add_alpha_in_lora.py --input_name in.safetensors --output_name out.safetensors
  # keep the factors, write per-module .alpha tensors instead:
  acetune export --input_name ckpt/epoch=3-step=400_lora --format comfyui --write_alpha
  # shrink to the rank that keeps 99% of each layer's energy:
  acetune export --input_name lora.safetensors --resize_energy 0.99 --bake_alpha
  # any ACE-Step 1.5 LoRA (official trainer, Side-Step, LyCORIS LoKr, diffusers) -> ComfyUI at strength 1.0:
  acetune export --input_name official_lora_folder --format comfyui
  # a --dora run for ComfyUI (dora_scale needs the base weights):
  acetune export --input_name ckpt/step-000400 --format comfyui --checkpoint_dir ACE-Step-v1-3.5B
  # a LoRA from a full fine-tune (`acetune train --full`), keeping 90% of each layer's delta energy:
  acetune export --extract_lora --base ACE-Step/ACE-Step-v1-3.5B --tuned checkpoints/run/transformer --energy 0.9
  # an ACE-Step 1.5 `train --full` run as one ComfyUI file (the rest of the model from ComfyUI's own file):
  acetune export --comfyui_checkpoint --input_name checkpoints/run/transformer --comfyui_base ComfyUI/models/diffusion_models/acestep_v1.5_turbo.safetensors
  # merge into the base transformer at strength 0.8:
  acetune export --input_name lora.safetensors --merge --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B --strength 0.8
"""

FORMATS = {"peft": lk.STYLE_BARE, "comfyui": lk.STYLE_COMFYUI, "kohya": lk.STYLE_KOHYA}


@dataclass
class Args:
    input_name: str = arg("", help="LoRA .safetensors file, or a folder holding pytorch_lora_weights.safetensors "
                               "or adapter_model.safetensors (v1, or any ACE-Step 1.5 layout: found from the keys)",
                          aliases=("--input",))
    output_name: str | None = arg(None, help="output .safetensors file, or a folder (then weights + "
                                             "adapter_config.json go inside); default: next to the input",
                                  aliases=("--output",))
    lora_config_path: str | None = arg(None, help="peft adapter config (r, lora_alpha, use_rslora); default: "
                                                  "the one embedded in the file or adapter_config.json beside it")
    bake_alpha: bool = arg(False, help="multiply A and B by sqrt(scale) so a loader applying B@A at strength "
                                       "1.0 reproduces training (the fork's bake_alpha_in_lora.py)")
    format: str | None = arg(None, choices=tuple(FORMATS), help="key names: peft (v1: bare module paths, the saved "
                             "layout; 1.5: the diffusers layout), comfyui (v1: diffusion_model.<module>; 1.5: "
                             "base_model.model.<module>), kohya (lora_unet_...); comfyui/kohya bake alpha unless "
                             "--write_alpha. Default: peft, or comfyui for a 1.5 adapter with --bake_alpha/--write_alpha")
    write_alpha: bool = arg(False, help="keep A and B, write a per-module .alpha tensor (= scale * r) instead "
                                        "of baking")
    resize: int | None = arg(None, help="SVD-resize every module to this rank (at most its current rank)",
                             metavar="RANK")
    resize_energy: float | None = arg(None, help="SVD-resize each module to the smallest rank keeping this "
                                                 "fraction of the delta's squared singular values (e.g. 0.99)")
    merge: bool = arg(False, help="merge the LoRA into the base transformer and write a full "
                                  "ace_step_transformer folder")
    checkpoint_dir: str | None = arg(None, help="the base checkpoint (v1: holding ace_step_transformer/; 1.5: the "
                                                "diffusers folder) or its transformer folder: --merge merges into it, a "
                                                "DoRA export for ComfyUI reads the base weights (dora_scale); otherwise "
                                                "the LoRA's widths are checked against its layers (default: the "
                                                "checkpoint_dir in train_config.json beside the LoRA); a Hub id works too")
    overwrite: bool = arg(False, help="replace an existing --output_name that holds something else")
    strength: float = arg(1.0, help="with --merge: LoRA strength (1.0 = as trained)")
    assume_baked: bool = arg(False, help="the file has no config and no .alpha: treat its scale as 1 "
                                         "(a LoRA already baked)")
    comfyui_checkpoint: bool = arg(False, help="--input_name is a full fine-tune's transformer folder (or the "
                                   "checkpoint holding it): write it as one file for ComfyUI's 'Load Diffusion "
                                   "Model' (ACE-Step v1; ACE-Step 1.5 also needs --comfyui_base)")
    comfyui_base: str | None = arg(None, help="with --comfyui_checkpoint, ACE-Step 1.5: ComfyUI's released file of "
                                   "the model the run trained from (e.g. models/diffusion_models/acestep_v1.5_turbo"
                                   ".safetensors, or the all-in-one checkpoint); the output is that file with every "
                                   "decoder weight replaced by the fine-tuned one (condition encoder, audio "
                                   "tokenizer and the rest kept)", metavar="FILE")
    extract_lora: bool = arg(False, help="make a LoRA of a full fine-tune: truncated SVD of each linear layer's "
                             "weight delta (--tuned minus --base), written in ComfyUI keys at strength 1.0, with "
                             "the kept energy per module and overall")
    base: str = arg("", help="with --extract_lora: the model before fine-tuning (transformer folder, checkpoint "
                    "folder holding it, or .safetensors)")
    tuned: str = arg("", help="with --extract_lora: the fine-tuned model (e.g. <output_dir>/transformer of "
                     "`acetune train --full`)")
    rank: int | None = arg(None, help="with --extract_lora: keep this many singular values per module")
    energy: float | None = arg(None, help="with --extract_lora: keep the smallest rank whose squared singular "
                               "values reach this fraction of the delta's (e.g. 0.9)")

    def __post_init__(self):
        problems = []
        from acetune.stages.extract_lora import extract_problems

        problems += extract_problems(self)
        if self.comfyui_base and not self.comfyui_checkpoint:
            problems.append("--comfyui_base belongs to --comfyui_checkpoint")
        if self.resize is not None and self.resize_energy is not None:
            problems.append("--resize and --resize_energy both given: choose one")
        if self.resize is not None and self.resize < 1:
            problems.append("--resize must be a rank >= 1")
        if self.resize_energy is not None and not 0.0 < self.resize_energy <= 1.0:
            problems.append("--resize_energy must be in (0, 1], e.g. 0.99")
        if self.bake_alpha and self.write_alpha:
            problems.append("--bake_alpha and --write_alpha both given: bake the scale or write it, not both")
        if self.merge:
            if not self.checkpoint_dir:
                problems.append("--merge needs --checkpoint_dir (the base model to merge into)")
            others = [f for f, on in (("--bake_alpha", self.bake_alpha), ("--write_alpha", self.write_alpha),
                                      ("--format", self.format not in (None, "peft")),
                                      ("--resize", self.resize is not None or self.resize_energy is not None))
                      if on]
            if others:
                problems.append(f"--merge writes a transformer folder; drop {', '.join(others)}")
        elif self.strength != 1.0:
            problems.append("--strength applies to --merge only; in ComfyUI set strength in the LoRA loader node")
        if problems:
            raise UsageError("; ".join(problems))


# ---- transforms ----

def bake(mod: LoraModule) -> LoraModule:
    """Fold the scale into both factors (`bake_alpha_in_lora.py`): A, B *= sqrt(scale); scale -> 1."""
    if mod.scale == 1.0:
        return mod
    s = math.sqrt(mod.scale)  # same arithmetic as the fork: tensor (stored dtype) times a Python float
    return LoraModule(mod.a * s, mod.b * s, 1.0, mod.magnitude, mod.dora_scale)  # DoRA: ‖W + BA‖ is unchanged


# ---- writing ----

def write_lora(path: Path, modules: dict[str, LoraModule], style: str, write_alpha: bool, config: dict,
               overwrite: bool = True) -> None:
    """Write the LoRA atomically (temp + rename), with the peft config embedded in the metadata.
    `overwrite=False`: an existing file with other content is refused (the same content is fine)."""
    check_finite({f"{n}.{kind}": t for n, m in modules.items() for kind, t in ((lk.LORA_A, m.a), (lk.LORA_B, m.b))},
                 path, "exported")
    tensors = {}
    for name, mod in modules.items():
        parts = {lk.LORA_A: mod.a.contiguous(), lk.LORA_B: mod.b.contiguous()}
        if write_alpha:
            parts[lk.ALPHA] = torch.tensor(mod.scale * mod.rank, dtype=torch.float32)
        for kind, t in ((lk.MAGNITUDE, mod.magnitude), (lk.DORA_SCALE, mod.dora_scale)):
            if t is not None:
                parts[kind] = t.contiguous()
        tensors[name] = parts
    metadata = dict(lk.SAVED_METADATA)
    metadata[lk.ADAPTER_METADATA_KEY] = json.dumps(config, sort_keys=True)
    save_lora_file(path, lk.build_state_dict(tensors, style), metadata, overwrite)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- command ----

def _default_output(input_name: str, suffix: str, ext: str = ".safetensors") -> Path:
    given = Path(input_name)
    if given.is_dir():
        return given.parent / f"{given.name}{suffix}{ext}"
    return given.with_name(f"{given.stem}{suffix}{ext}")


def model_for_widths(checkpoint_dir: str | None, lora_path: Path) -> Path | None:
    """The transformer folder to check the LoRA's widths against: --checkpoint_dir, else the one its
    train_config.json names (if it still exists), else None."""
    if checkpoint_dir:
        return resolve_transformer_dir(checkpoint_dir)
    try:
        named = json.loads((lora_path.parent / "train_config.json").read_text(encoding="utf-8")).get("checkpoint_dir")
        return resolve_transformer_dir(named) if named else None
    except (OSError, ValueError, AttributeError, CheckpointError):
        return None


def official_v1_shapes() -> dict[str, tuple[int, ...]]:
    """Layer shapes of the released v1 transformer (its config is the class defaults), built on the meta device:
    nothing is downloaded or allocated."""
    from acetune.models.v1.transformer import ACEStepTransformer2DModel

    with torch.device("meta"):
        model = ACEStepTransformer2DModel()
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def trained_family(path: Path):
    """The model family a training checkpoint's `train_config.json` (beside the weights) names, else None."""
    from acetune.models.family import get_family

    config = path.parent / "train_config.json"
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return get_family(name) if name else None


def adapter_family(path: Path):
    """The family whose adapter `path` holds: from `train_config.json` beside it, else from the key names."""
    from acetune.models.family import get_family
    from acetune.models.v15.schema import FAMILY_NAME

    family = trained_family(path)
    if family is None:
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except Exception:  # unreadable: the v1 reader below reports it in one line
            return None
        family = get_family(FAMILY_NAME) if looks_like_v15(keys) else None
    return family


def run(args: Args) -> int:
    if args.extract_lora:
        from acetune.stages.extract_lora import run_extract

        return run_extract(args)
    if args.comfyui_checkpoint:
        from acetune.stages.extract_lora import run_comfyui_checkpoint

        return run_comfyui_checkpoint(args)
    # a Hub id is fetched (the transformer only: merging, DoRA scales and width checks read nothing else)
    hub.resolve_args(args, checkpoint_dir="train")
    path = resolve_adapter_file(args.input_name)
    family = adapter_family(path)
    if hasattr(family, "export_lora"):  # a family with its own key layouts (ACE-Step 1.5)
        return family.export_lora(args, path, lambda suffix, ext: _default_output(args.input_name, suffix, ext))
    args.format = args.format or "peft"
    lora = read_lora(path, args.lora_config_path,
                     if_no_scale=NO_SCALE_BAKED if args.assume_baked else NO_SCALE_ERROR)
    modules, config = lora.modules, lora.config
    model = model_for_widths(args.checkpoint_dir, path)
    if model is not None:
        check_widths({n: (tuple(m.a.shape), tuple(m.b.shape)) for n, m in modules.items()}, weight_shapes(model),
                     path, model)
    else:  # no model named anywhere: the released model's widths, and blocks that agree with each other
        pairs = {n: (tuple(m.a.shape), tuple(m.b.shape)) for n, m in modules.items()}
        check_consistent(pairs, path)
        try:
            check_widths(pairs, official_v1_shapes(), path, "the released ACE-Step v1 3.5B")
        except InputError as err:  # a LoRA of another size may be right for its own model: say it, go on
            logger.warning("%s: %s (no train_config.json beside it; pass --checkpoint_dir to check it against the "
                           "model it was trained on)", path, err.reason)
    for_comfyui = args.format != "peft" or args.bake_alpha or args.write_alpha
    if any(m.dora for m in modules.values()):
        refused = [msg for bad, msg in (
            (args.merge, "--merge of a DoRA LoRA is not available"),
            (args.resize is not None or args.resize_energy is not None,
             "--resize cannot keep a DoRA LoRA exact (its magnitude normalises the full delta)"),
            (for_comfyui and model is None and any(m.magnitude is not None for m in modules.values()),
             "DoRA for ComfyUI needs the base weights (ComfyUI normalises by the base row norm): add --checkpoint_dir"),
        ) if bad]
        if refused:
            raise UsageError("; ".join(refused), path=path)
        if for_comfyui:  # the base: --checkpoint_dir, else the one train_config.json beside the LoRA names
            modules = with_comfyui_dora_scale(modules, model)

    if args.merge:
        src = resolve_transformer_dir(args.checkpoint_dir)
        out = Path(args.output_name) if args.output_name else \
            _default_output(args.input_name, "_merged", "") / V1_TRANSFORMER_DIR
        if out.resolve() == src.resolve():
            raise UsageError("--output_name is the base transformer folder", path=out, fix="choose a new folder")
        if out.exists() and not args.overwrite:
            raise UsageError("exists already", path=out, fix="pass --overwrite to replace it, or choose a new folder")
        n = merge_into_transformer(modules, src, out, args.strength)
        print(f"merged {n} LoRA modules at strength {args.strength:g} into {out}")
        return 0

    suffix = ""
    if args.resize is not None or args.resize_energy is not None:
        rslora = bool(config and config.get("use_rslora", False))
        print(f"{'module':<56} {'rank':>9}  kept energy")
        kept_all = []
        for name in sorted(modules):
            old = modules[name]
            modules[name], kept = svd_resize(old, args.resize, args.resize_energy, rslora)
            kept_all.append(kept)
            print(f"{name:<56} {old.rank:>4} -> {modules[name].rank:<3} {kept:.6f}")
        print(f"resized {len(modules)} modules: kept energy min {min(kept_all):.6f}, "
              f"mean {sum(kept_all) / len(kept_all):.6f}; relative delta error = sqrt(1 - kept)")
        suffix += f"_r{args.resize}" if args.resize is not None else f"_e{args.resize_energy:g}"

    style = FORMATS[args.format]
    do_bake = args.bake_alpha or (args.format != "peft" and not args.write_alpha)
    if do_bake:
        scales = sorted({round(m.scale, 9) for m in modules.values()})
        modules = {n: bake(m) for n, m in modules.items()}
        print(f"baked scale {', '.join(f'{s:g}' for s in scales)} (A and B times "
              f"{', '.join(f'{math.sqrt(s):.6g}' for s in scales)}): load at strength 1.0")
        suffix += "_baked"
    elif args.write_alpha:
        suffix += "_alpha"
    if args.format != "peft":
        suffix += f"_{args.format}"

    out = Path(args.output_name) if args.output_name else _default_output(args.input_name, suffix or "_export")
    if out.suffix != ".safetensors":
        out = out / lk.LORA_WEIGHTS_FILE
    if out.resolve() == path.resolve():
        raise UsageError("--output_name is the input file", path=out, fix="choose another output name")
    new_config = describe_config(modules, config)
    write_lora(out, modules, style, args.write_alpha, new_config, overwrite=args.overwrite)
    sidecar = out.parent / lk.ADAPTER_CONFIG_FILE
    # A config beside the weights lets peft/diffusers load them; never overwrite the input's own.
    if args.format == "peft" and not args.write_alpha:
        if not sidecar.exists():
            _write_text_atomic(sidecar, json.dumps(new_config, indent=2, sort_keys=True))
        elif read_adapter_config(sidecar) != new_config:
            logger.warning("%s is kept as is and does not describe %s; its own config is embedded in the "
                           "file (diffusers reads it). Write to a new folder for a loadable peft folder.",
                           sidecar, out.name)
    print(f"wrote {len(modules)} modules ({args.format} keys{', .alpha tensors' if args.write_alpha else ''}) "
          f"to {out}")
    return 0
