"""LoRA key names, defined once: the saved layout, ComfyUI's accepted forms, and parsing back.

Saved layout (what diffusers' `save_lora_adapter` writes and the fork's trainer keeps):
`<module path>.lora_A.weight` (r, in) and `<module path>.lora_B.weight` (out, r), no prefix, no
adapter name, no alpha tensor, safetensors metadata `{"format": "pt"}`, in
`pytorch_lora_weights.safetensors` with the peft config in `adapter_config.json` beside it.

ComfyUI's ACE-Step v1 loader (facts: ../shared/facts/comfyui-lora.md) maps three prefixes onto the
official module path `P`: bare `P`, `diffusion_model.P`, and kohya `lora_unet_<P with dots as _>`;
suffixes `.lora_A.weight`/`.lora_B.weight` (or `.lora_A.default.weight`), `.lora_down.weight`/
`.lora_up.weight`, and a scalar `.alpha`. It applies `W += strength * (alpha / rank) * B @ A`
when `.alpha` exists, else `W += strength * B @ A` (no rsLoRA).

Reading also accepts peft's `base_model.model.` wrapper and diffusers' pipeline `transformer.`
prefix (ComfyUI skips both for v1), so exporting converts them into a form ComfyUI loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from acetune.errors import InputError

# Spelled out rather than imported: `diffusers.loaders` costs seconds to import (the tests check
# these equal peft's CONFIG_NAME and diffusers' LORA_WEIGHT_NAME_SAFE / LORA_ADAPTER_METADATA_KEY).
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's config name, next to the weights
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
SAVED_METADATA = {"format": "pt"}
# diffusers >= 0.34 also stores the LoraConfig as JSON under this safetensors metadata key.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"

# Tensor kinds of one adapted module.
LORA_A = "lora_A"  # down projection, (r, in)
LORA_B = "lora_B"  # up projection, (out, r)
ALPHA = "alpha"  # scalar; ComfyUI scale = alpha / r
MAGNITUDE = "lora_magnitude_vector"  # peft DoRA magnitude m, (out,): W' = m * (W + s B A) / ||W + s B A||_row
DORA_SCALE = "dora_scale"  # ComfyUI's DoRA tensor, (out, 1); ComfyUI divides by the BASE weight's row norm
KINDS = (LORA_A, LORA_B, ALPHA, MAGNITUDE, DORA_SCALE)

# Key styles we write. "bare" is the saved layout (peft names); ComfyUI accepts all three.
STYLE_BARE = "bare"
STYLE_COMFYUI = "diffusion_model"
STYLE_KOHYA = "kohya"
KEY_STYLES = (STYLE_BARE, STYLE_COMFYUI, STYLE_KOHYA)

COMFYUI_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
# Prefixes we strip when reading (ComfyUI itself does not map them for v1).
READ_ONLY_PREFIXES = ("base_model.model.", "transformer.")

# Official v1 transformer name segments that contain "_" (from the 874-key state dict). Needed to
# turn a kohya name (every "." replaced by "_") back into a module path without the model at hand.
V1_UNDERSCORE_SEGMENTS = (
    "add_k_proj", "add_q_proj", "add_v_proj", "after_norm", "cross_attn", "depth_conv",
    "early_conv_layers", "feed_forward", "final_layer", "genre_embedder", "inverted_conv",
    "linear_1", "linear_2", "linear_k", "linear_out", "linear_pos", "linear_q", "linear_v",
    "lyric_embs", "lyric_encoder", "lyric_proj", "norm_ff", "norm_mha", "point_conv", "proj_in",
    "self_attn", "speaker_embedder", "t_block", "timestep_embedder", "to_add_out", "to_k",
    "to_out", "to_q", "to_v", "transformer_blocks", "w_1", "w_2",
)

# First segment of every official v1 transformer key: a bare key must start with one of these
# (this is what rejects `unet.`, `lycoris_`, `lora_te_`, ... as ComfyUI does for v1).
V1_TOP_LEVEL = (
    "final_layer", "genre_embedder", "lyric_embs", "lyric_encoder", "lyric_proj", "proj_in",
    "projectors", "speaker_embedder", "t_block", "timestep_embedder", "transformer_blocks",
)

# suffix regex -> kind. Order matters only for readability; the patterns are disjoint.
_SUFFIXES = (
    (re.compile(r"\.lora_A(?:\.[A-Za-z_][\w-]*)?\.weight$"), LORA_A),
    (re.compile(r"\.lora_B(?:\.[A-Za-z_][\w-]*)?\.weight$"), LORA_B),
    (re.compile(r"\.lora_down\.weight$"), LORA_A),
    (re.compile(r"\.lora_up\.weight$"), LORA_B),
    (re.compile(r"\.alpha$"), ALPHA),
    (re.compile(r"\.lora_magnitude_vector(?:\.[A-Za-z_][\w-]*)?(?:\.weight)?$"), MAGNITUDE),
    (re.compile(r"\.dora_scale$"), DORA_SCALE),
)


# ---- ACE-Step 1.5 decoder names (ComfyUI's `diffusion_model.decoder.<module>`) ----
# Module paths are kept in the original 1.5 spelling (`layers.0.self_attn.q_proj`, as the official
# trainer and ComfyUI name them); diffusers spells attention projections `to_q`/`to_k`/`to_v`/`to_out.0`.
V15_PEFT_PREFIX = "base_model.model."  # peft around the decoder: the official trainer, Side-Step, ours
V15_COMFYUI_PREFIX = "diffusion_model.decoder."
V15_DIFFUSERS_PREFIX = "transformer."  # AceStepPipeline.save_lora_weights
V15_LYCORIS_PREFIX = "lycoris_"  # + module path with "." -> "_"
V15_KOHYA_PREFIX = "lora_unet_decoder_"  # + module path with "." -> "_"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft `save_pretrained`
# One adapted 1.5 linear in either spelling, with "." or "_" between segments (LyCORIS/kohya flatten it).
_V15_MODULE = re.compile(r"layers[._](\d+)[._](?:(self_attn|cross_attn)[._](?:([qkvo])_proj|to_([qkv])|(to_out[._]0))"
                         r"|mlp[._](gate|up|down)_proj)")
_V15_DIFFUSERS_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "o_proj": "to_out.0"}


def v15_module(stem: str) -> str | None:
    """A 1.5 decoder linear in any spelling -> its original path (`layers.0.self_attn.q_proj`), else None.

    >>> v15_module("layers_3_cross_attn_to_out_0")
    'layers.3.cross_attn.o_proj'
    """
    m = _V15_MODULE.fullmatch(stem)
    if m is None:
        return None
    layer, attn, proj, to_proj, to_out, mlp = m.groups()
    if attn:
        return f"layers.{layer}.{attn}.{proj or to_proj or 'o'}_proj"
    return f"layers.{layer}.mlp.{mlp}_proj"


def v15_diffusers_module(original: str) -> str:
    """`layers.0.self_attn.o_proj` -> `layers.0.self_attn.to_out.0` (MLP names are shared)."""
    head, _, leaf = original.rpartition(".")
    return f"{head}.{_V15_DIFFUSERS_NAMES.get(leaf, leaf)}"


# ---- writing ----

def saved_key(module: str, kind: str) -> str:
    """The saved-layout key: `saved_key("transformer_blocks.0.attn.to_q", "lora_A")` ->
    `transformer_blocks.0.attn.to_q.lora_A.weight`; `.alpha` for kind "alpha"."""
    return format_key(module, kind, STYLE_BARE)


def kohya_name(module: str) -> str:
    """`transformer_blocks.0.attn.to_q` -> `lora_unet_transformer_blocks_0_attn_to_q` (ComfyUI's rule)."""
    return KOHYA_PREFIX + module.replace(".", "_")


def format_key(module: str, kind: str, style: str = STYLE_BARE) -> str:
    """The key for one tensor of `module` in `style` ("bare", "diffusion_model" or "kohya").

    Kohya keys use `.lora_down.weight`/`.lora_up.weight`; the others `.lora_A.weight`/`.lora_B.weight`;
    `.alpha`, `.lora_magnitude_vector` (peft DoRA) and `.dora_scale` (ComfyUI DoRA) are the same in every style.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown LoRA tensor kind {kind!r}")
    if style == STYLE_KOHYA:
        suffix = {LORA_A: ".lora_down.weight", LORA_B: ".lora_up.weight"}.get(kind, "." + kind)
        return kohya_name(module) + suffix
    suffix = {LORA_A: ".lora_A.weight", LORA_B: ".lora_B.weight"}.get(kind, "." + kind)
    if style == STYLE_BARE:
        return module + suffix
    if style == STYLE_COMFYUI:
        return COMFYUI_PREFIX + module + suffix
    raise ValueError(f"unknown key style {style!r}; one of {KEY_STYLES}")


def build_state_dict(modules: Mapping[str, Mapping[str, torch.Tensor]], style: str = STYLE_BARE) -> dict:
    """Flatten `{module: {kind: tensor}}` into keys of `style` (sorted by module for stable files)."""
    out = {}
    for module in sorted(modules):
        for kind, tensor in modules[module].items():
            out[format_key(module, kind, style)] = tensor
    return out


# ---- reading ----

def module_from_kohya(name: str, modules: Iterable[str] | None = None) -> str:
    """Invert `kohya_name`: `lora_unet_transformer_blocks_0_attn_to_out_0` -> `transformer_blocks.0.attn.to_out.0`.

    With `modules` (known module paths), the lookup is exact; otherwise segments are rebuilt from
    `V1_UNDERSCORE_SEGMENTS` (longest match first), which covers every official v1 module.
    Raises ValueError when `name` has no kohya prefix or is not a known module.
    """
    if not name.startswith(KOHYA_PREFIX):
        raise ValueError(f"{name!r} has no {KOHYA_PREFIX!r} prefix")
    flat = name[len(KOHYA_PREFIX):]
    if modules is not None:
        table = {m.replace(".", "_"): m for m in modules}
        if flat not in table:
            raise ValueError(f"{name!r} matches no module of the model")
        return table[flat]
    tokens = flat.split("_")
    by_len = sorted((s.split("_") for s in V1_UNDERSCORE_SEGMENTS), key=len, reverse=True)
    segments, i = [], 0
    while i < len(tokens):
        for seg in by_len:
            if tokens[i:i + len(seg)] == seg:
                segments.append("_".join(seg))
                i += len(seg)
                break
        else:
            segments.append(tokens[i])
            i += 1
    if any(s == "" for s in segments) or segments[0] not in V1_TOP_LEVEL:
        raise ValueError(f"{name!r} is not a kohya name of an ACE-Step v1 module")
    return ".".join(segments)


def parse_key(key: str, modules: Iterable[str] | None = None) -> tuple[str, str]:
    """Any accepted LoRA key -> (official module path, kind). Raises ValueError if not a LoRA key.

    >>> parse_key("diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight")
    ('transformer_blocks.0.attn.to_q', 'lora_A')
    """
    for pattern, suffix_kind in _SUFFIXES:
        m = pattern.search(key)
        if m:
            stem, kind = key[:m.start()], suffix_kind
            break
    else:
        raise ValueError(f"{key!r} has no LoRA suffix (.lora_A/.lora_B/.lora_down/.lora_up/.alpha)")
    if stem.startswith(KOHYA_PREFIX):
        return module_from_kohya(stem, modules), kind
    for prefix in (COMFYUI_PREFIX, *READ_ONLY_PREFIXES):
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
            break
    if not stem or stem.startswith(".") or stem.endswith("."):
        raise ValueError(f"{key!r} has no module path")
    if modules is not None:
        if stem not in set(modules):
            raise ValueError(f"{key!r} matches no module of the model")
    elif stem.split(".")[0] not in V1_TOP_LEVEL:
        raise ValueError(f"{key!r} is not under an ACE-Step v1 transformer module")
    return stem, kind


# ACE-Step 1.5's decoder layers (`layers.N.self_attn.q_proj`, diffusers `transformer.layers.N...`) and LoKr
# factors: names no v1 module has.
# 1.5 decoder module names, dotted or LyCORIS/kohya-underscored (a LoKr suffix alone says nothing of the family)
_V15_KEY = re.compile(r"(^|[._])layers[._]\d+[._](self_attn|cross_attn|mlp)[._]")


def split_modules(state_dict: Mapping[str, torch.Tensor], path=None,
                  modules: Iterable[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Group a LoRA state dict (any accepted key form) into `{module: {"lora_A", "lora_B"[, "alpha"]}}`.

    Raises InputError naming `path` for: no tensors, keys that are not LoRA keys ComfyUI can map,
    a module given twice, a module missing A or B, or A/B ranks that disagree.
    """
    known = None if modules is None else list(modules)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        try:
            module, kind = parse_key(key, known)
        except ValueError:
            unknown.append(key)
            continue
        if kind in grouped.setdefault(module, {}):
            raise InputError(f"LoRA module {module!r} appears twice (key {key!r})", path=path,
                             fix="keep one copy of each module's tensors")
        grouped[module][kind] = tensor
    if unknown and any(_V15_KEY.search(k) for k in unknown):
        raise InputError(f"this is an ACE-Step 1.5 adapter (keys like {sorted(unknown)[0]!r}), not one for ACE-Step v1",
                         path=path, fix="use it with an ACE-Step 1.5 checkpoint (--checkpoint_dir of a 1.5 model)")
    if unknown:
        raise InputError(f"{len(unknown)} of {len(state_dict)} keys are not LoRA keys we can map "
                         f"(first: {sorted(unknown)[0]!r})", path=path,
                         fix="only plain LoRA (lora_A/lora_B, lora_down/lora_up, alpha) is supported")
    if not grouped:
        raise InputError("no LoRA tensors in this file", path=path,
                         fix="pass the pytorch_lora_weights.safetensors a training checkpoint holds")
    for module, parts in grouped.items():
        if LORA_A not in parts or LORA_B not in parts:
            raise InputError(f"LoRA module {module!r} lacks its {LORA_B if LORA_A in parts else LORA_A} "
                             "tensor", path=path, fix="the file is incomplete; export it again")
        a, b = parts[LORA_A], parts[LORA_B]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise InputError(f"LoRA module {module!r}: A {tuple(a.shape)} and B {tuple(b.shape)} are not "
                             "a linear LoRA pair", path=path, fix="only linear-layer LoRAs are supported")
    return grouped


# ---- from a model ----

def saved_lora_state_dict(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The LoRA tensors of a peft-wrapped model in the saved layout (`<module>.lora_A.weight`).

    Uses peft's `get_peft_model_state_dict` (adapter name removed) and strips a `base_model.model.`
    wrapper, so `diffusers` `add_adapter`, peft `inject_adapter_in_model` and `get_peft_model` all give
    the same keys as `save_lora_adapter` writes.
    """
    from peft.utils import get_peft_model_state_dict

    raw = get_peft_model_state_dict(model, adapter_name=adapter_name)
    grouped = split_modules(raw, path=f"<model adapter {adapter_name!r}>")
    return build_state_dict(grouped, STYLE_BARE)
