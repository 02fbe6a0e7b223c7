"""An ACE-Step 1.5 full fine-tune as the single file ComfyUI loads:
`acetune export --comfyui_checkpoint --input_name <run>/transformer --comfyui_base <ComfyUI 1.5 file>`.

ComfyUI's 1.5 model (`AceStepConditionGenerationModel`, comfy/ldm/ace/ace_step15.py, 2026-02; XL since
2026-04) is one state dict, under "" in a `diffusion_models/` file or `model.diffusion_model.` in an
all-in-one checkpoint (the prefix `unet_prefix_from_state_dict` strips):

    decoder.*                  the DiT: what `acetune train --full` trains (diffusers `AceStepTransformer1DModel`)
    encoder.*                  condition encoder (text projector, lyric and timbre encoders)
    tokenizer.*, detokenizer.*  audio tokenizer / detokenizer (cover conditioning; not in the diffusers folders)
    null_condition_emb         the unconditional embedding (CFG)

ComfyUI recognises it by `encoder.lyric_encoder.layers.0.input_layernorm.weight` and reads every width from
the tensors (XL: a 2560-wide decoder on a 2048-wide encoder). The parts acetune does not train exist only in
the user's released file, so the output is that file with every decoder tensor replaced by the fine-tuned
one: names mapped by `DECODER_RENAMES`, every decoder key of the base matched exactly once, shapes equal,
everything else copied byte for byte. A decoder tensor keeps the fine-tune's dtype, byte-equal to the
folder (ComfyUI casts weights to its compute dtype when it loads them). Tensors are streamed
(`safetensors_stream`): the peak memory is one 16 MB copy buffer, never a model.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from acetune.errors import InputError
from acetune.layout import V1_MARKER
from acetune.models.v15.variant import RELEASED_WIDTHS
from acetune.safetensors_stream import FLOAT_DTYPES, Stored, read_header, write_streamed

logger = logging.getLogger(__name__)

DECODER = "decoder."  # ComfyUI's attribute holding the DiT
DETECT_KEY = "encoder.lyric_encoder.layers.0.input_layernorm.weight"  # what ComfyUI's model_detection looks for
WIDTH_KEY = "layers.0.self_attn_norm.weight"  # (hidden,) under the same name in both layouts
# The whole decoder mapping: a diffusers path piece -> ComfyUI's. Every other piece (layers.N, self_attn,
# cross_attn, *_norm, mlp.{gate,up,down}_proj, time_embed*, condition_embedder, norm_out,
# scale_shift_table) is spelled the same in both; `decoder.` goes in front.
DECODER_RENAMES = {
    "proj_in_conv": "proj_in.1",  # ComfyUI: Sequential(Identity, Conv1d)
    "proj_out_conv": "proj_out.1",  # Sequential(Identity, ConvTranspose1d)
    "to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj",  # attention projections
    "norm_q": "q_norm", "norm_k": "k_norm",  # per-head RMSNorm of queries / keys
}
_PIECE = re.compile(r"(?<![^.])(" + "|".join(re.escape(k) for k in sorted(DECODER_RENAMES, key=len, reverse=True))
                    + r")(?![^.])")
_LAYER = re.compile(r"^layers\.(\d+)\.")
FIX_BASE = ("give the ComfyUI ACE-Step 1.5 file of the model the run trained from (ComfyUI/models/diffusion_models/"
            "acestep_v1.5_*.safetensors, or the all-in-one checkpoint)")


def comfyui_name(diffusers_name: str) -> str:
    """`layers.0.self_attn.to_out.0.weight` -> `decoder.layers.0.self_attn.o_proj.weight` (no prefix)."""
    return DECODER + _PIECE.sub(lambda m: DECODER_RENAMES[m.group(1)], diffusers_name)


def read_trained(folder: Path) -> dict[str, Stored]:
    """Every tensor of a diffusers transformer folder (one file or shards), by its diffusers name."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise InputError("no .safetensors weights in this folder", path=folder,
                         fix="give <output_dir>/transformer of `acetune train --full`")
    tensors: dict[str, Stored] = {}
    for f in files:
        found, _ = read_header(f)
        twice = sorted(set(found) & set(tensors))
        if twice:
            raise InputError(f"{len(twice)} tensors are in two of its files (first: {twice[0]})", path=folder,
                             fix="keep one set of weights in the folder")
        tensors.update(found)
    return tensors


def base_prefix(path: Path, tensors: dict[str, Stored]) -> str:
    """The prefix of ComfyUI's 1.5 model in the base file; InputError if the file is not one."""
    found = [k[:-len(DETECT_KEY)] for k in tensors if k.endswith(DETECT_KEY)]
    prefix = min(found, key=len) if found else None
    if prefix is None or prefix + DECODER + WIDTH_KEY not in tensors:
        if any(k.endswith(V1_MARKER) for k in tensors):
            what = "an ACE-Step v1 file"
        elif WIDTH_KEY in tensors or any(k.endswith("." + WIDTH_KEY) for k in tensors):
            what = "a transformer without ComfyUI's condition encoder (a diffusers or trainer file?)"
        else:
            what = "not an ACE-Step 1.5 ComfyUI file"
        raise InputError(f"--comfyui_base: {what} (no {DETECT_KEY} beside decoder.{WIDTH_KEY})", path=path,
                         fix=FIX_BASE)
    return prefix


def _size(width: int) -> str:
    return f"{width} wide" + (f", 1.5 {RELEASED_WIDTHS[width]}" if width in RELEASED_WIDTHS else "")


def _layers(names) -> int:
    return len({m.group(1) for m in map(_LAYER.match, names) if m})


def plan(folder: Path, base_path: Path) -> tuple[list[tuple[str, Stored]], dict[str, str], dict]:
    """The output's (name, source) pairs in the base's order, its metadata, and a summary; every check
    (family, width, layer count, a one-to-one name match, shapes, dtypes) raises a one-line InputError."""
    trained = read_trained(folder)
    base, metadata = read_header(base_path)
    prefix = base_prefix(base_path, base)
    if WIDTH_KEY not in trained:
        raise InputError(f"not an ACE-Step 1.5 transformer (no {WIDTH_KEY})", path=folder,
                         fix="give <output_dir>/transformer of an ACE-Step 1.5 `acetune train --full` run")
    ours, theirs = trained[WIDTH_KEY].shape[0], base[prefix + DECODER + WIDTH_KEY].shape[0]
    if ours != theirs:
        raise InputError(f"--comfyui_base: its decoder is {_size(theirs)}; the fine-tune's is {_size(ours)}",
                         path=base_path, fix=FIX_BASE)
    decoder = {k[len(prefix) + len(DECODER):] for k in base if k.startswith(prefix + DECODER)}
    if _layers(decoder) != _layers(trained):
        raise InputError(f"--comfyui_base: its decoder has {_layers(decoder)} layers; the fine-tune's has "
                         f"{_layers(trained)}", path=base_path, fix=FIX_BASE)
    mapped: dict[str, str] = {}  # ComfyUI name (with prefix) -> diffusers name
    for name in sorted(trained):
        target = prefix + comfyui_name(name)
        if target in mapped:
            raise InputError(f"{mapped[target]} and {name} both map to {target}", path=folder,
                             fix="report this: the name mapping is not one-to-one")
        mapped[target] = name
    missing = sorted(k for k in base if k.startswith(prefix + DECODER) and k not in mapped)
    extra = sorted(mapped[k] for k in mapped if k not in base)
    if missing or extra:
        parts = [f"{len(missing)} decoder tensors of the base have no fine-tuned tensor (first: {missing[0]})"
                 if missing else "", f"{len(extra)} fine-tuned tensors have no place in the base (first: {extra[0]})"
                 if extra else ""]
        raise InputError("--comfyui_base: " + "; ".join(p for p in parts if p), path=base_path,
                         fix=FIX_BASE + " (a quantized or pruned file does not fit)")
    for target, name in mapped.items():
        have, want = trained[name], base[target]
        if have.shape != want.shape:
            raise InputError(f"--comfyui_base: {target} is {list(want.shape)} there, {list(have.shape)} in the "
                             f"fine-tune ({name})", path=base_path, fix=FIX_BASE)
        for label, t, where in (("the base's", want, base_path), ("the fine-tune's", have, folder)):
            if t.dtype not in FLOAT_DTYPES:
                raise InputError(f"{label} {target} is {t.dtype}; only {'/'.join(FLOAT_DTYPES)} weights are replaced "
                                 "(a quantized file cannot take new weights)", path=where,
                                 fix="use the bf16 release as --comfyui_base" if where == base_path else
                                 "write the folder again with `acetune train --full`")
    items = [(k, trained[mapped[k]] if k in mapped else src) for k, src in base.items()]
    summary = {"prefix": prefix, "replaced": len(mapped), "kept": len(base) - len(mapped), "width": ours,
               "layers": _layers(trained), "dtypes": sorted({trained[n].dtype for n in mapped.values()})}
    out_meta = {**metadata, "acetune_decoder": "ACE-Step 1.5 full fine-tune (acetune); the rest from "
                + Path(base_path).name}
    return items, out_meta, summary


def warn_if_other_checkpoint(folder: Path, base_path: Path, prefix: str) -> None:
    """Warn when the base's condition encoder is not the one the run trained with (another variant or size
    would condition the fine-tuned decoder wrongly). Checks two small tensors when the run's checkpoint is
    still where `acetune_full_finetune.json` says; silent otherwise."""
    import torch
    from safetensors import safe_open

    try:
        checkpoint = Path(json.loads((Path(folder) / "acetune_full_finetune.json").read_text("utf-8"))["base"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    files = sorted((checkpoint / "condition_encoder").glob("*.safetensors"))
    pairs = {"null_condition_emb": "null_condition_emb", "text_projector.weight": "encoder.text_projector.weight"}
    ours: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            ours.update({k: sf.get_tensor(k) for k in pairs if k in sf.keys()})
    if not ours:
        return
    with safe_open(str(base_path), framework="pt") as sf:
        names = set(sf.keys())
        differ = []
        for name, t in ours.items():
            key = prefix + pairs[name]
            theirs = sf.get_tensor(key) if key in names else None
            low = min((t.dtype, theirs.dtype), key=lambda d: torch.finfo(d).bits) if theirs is not None else None
            if theirs is None or theirs.shape != t.shape or not torch.equal(t.to(low), theirs.to(low)):
                differ.append(pairs[name])
    if differ:
        logger.warning("%s: its condition encoder (%s) is not the one of %s, the checkpoint the run trained from; "
                       "if that is another variant or size, the fine-tuned decoder will be conditioned wrongly in "
                       "ComfyUI (use the ComfyUI file of the same model)", base_path, ", ".join(differ), checkpoint)


def write_comfyui_checkpoint_15(folder: Path, base_path: Path, out: Path) -> dict:
    """Check, then stream the single file to `out` (atomically); returns the `plan` summary plus bytes."""
    items, metadata, summary = plan(Path(folder), Path(base_path))
    warn_if_other_checkpoint(Path(folder), Path(base_path), summary["prefix"])
    summary["bytes"] = write_streamed(Path(out), items, metadata)
    return summary


def export_command(folder: Path) -> str:
    """The command a 1.5 `--full` run prints at its end (the run cannot know where the user's ComfyUI file is)."""
    def quoted(p: str) -> str:
        return f'"{p}"' if " " in p else p
    return (f"acetune export --comfyui_checkpoint --input_name {quoted(str(folder))} --comfyui_base "
            "<ComfyUI's file of the model you trained from, e.g. "
            "ComfyUI/models/diffusion_models/acestep_v1.5_turbo.safetensors>")
