"""Read any ACE-Step 1.5 adapter into one form: layout from the keys, scale from `.alpha`, a config or flags.

Layouts recognised (key prefix -> where such files come from):

    base_model.model.<module>            peft around the decoder: the official trainer's `adapter_model.safetensors`
                                         (+ adapter_config.json), Side-Step's native files (+ `.alpha`), our ComfyUI export
    diffusion_model.decoder.<module>     ComfyUI's own key names (Side-Step's generic ComfyUI files, + `.alpha`)
    transformer.<module>                 diffusers (`AceStepPipeline.save_lora_weights`, peft config in the metadata)
    lycoris_<module with _>              LyCORIS (LoKr `lokr_w1`/`lokr_w2`/`_a`/`_b`, LoRA `lora_down`/`lora_up`)
    lora_unet_decoder_<module with _>    kohya
    diffusion_model.<module>             older Side-Step files
    <module>                             acetune's saved layout (step folders, adapter_config.json beside)

`<module>` is a decoder linear in the original (`self_attn.q_proj`) or diffusers (`self_attn.to_q`) spelling,
optionally after `decoder.` (peft wrapped around the whole model).
Tensors: LoRA `lora_A`/`lora_B` (or `lora_down`/`lora_up`), LoKr `lokr_*`, `.alpha`, DoRA's peft
`lora_magnitude_vector` or ComfyUI's `dora_scale`. Anything else is an error that names the keys.

Scale (the multiplier the source trainer applied to B @ A, or to kron(w1, w2) for LoKr), per module:
1. a `.alpha` tensor: ComfyUI's and LyCORIS's rule, alpha / rank (LoKr: alpha / rank of the decomposed
   factor; 1 when neither factor is decomposed);
2. a peft config: `--lora_config_path`, else the one embedded in the file's metadata (diffusers), else
   adapter_config.json beside the file: lora_alpha / r (/ sqrt(r) with rsLoRA), LoKr alpha / r;
3. else 1.0 for layouts only ComfyUI reads (its own rule), for our own exports (their metadata says the
   scale is baked) and with `--assume_baked`; otherwise an error (the strength would be a guess).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from acetune.errors import InputError
from acetune.lora import keys as lk
from acetune.lora.check import check_finite
from acetune.lora.file import pattern_value, peft_scale

# Metadata our ComfyUI exports carry: the scale is baked into the factors.
ACETUNE_FAMILY_METADATA = "acetune_family"

LAYOUT_PEFT = "peft (base_model.model.)"
LAYOUT_COMFYUI = "ComfyUI (diffusion_model.decoder.)"
LAYOUT_DIFFUSERS = "diffusers (transformer.)"
LAYOUT_LYCORIS = "LyCORIS (lycoris_)"
LAYOUT_KOHYA = "kohya (lora_unet_decoder_)"
LAYOUT_SAVED = "acetune saved layout"
LAYOUT_LEGACY = "diffusion_model. without decoder. (older Side-Step)"
# (prefix, layout) in the order they are tried; the bare layout last.
_PREFIXES = ((lk.V15_PEFT_PREFIX, LAYOUT_PEFT), (lk.V15_COMFYUI_PREFIX, LAYOUT_COMFYUI),
             (lk.V15_DIFFUSERS_PREFIX, LAYOUT_DIFFUSERS), (lk.V15_LYCORIS_PREFIX, LAYOUT_LYCORIS),
             (lk.V15_KOHYA_PREFIX, LAYOUT_KOHYA), ("diffusion_model.", LAYOUT_LEGACY), ("", LAYOUT_SAVED))
# Layouts defined by ComfyUI's loader: without `.alpha` it applies scale 1, so that is what they mean.
_COMFYUI_ONLY = (LAYOUT_COMFYUI, LAYOUT_LYCORIS, LAYOUT_KOHYA)

LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_SUFFIX = re.compile(r"\.(?:(lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z_][\w-]*)?\.weight"
                     r"|(lora_magnitude_vector)(?:\.[A-Za-z_][\w-]*)?(?:\.weight)?"
                     r"|(alpha|dora_scale|lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b))$")
_CANONICAL = {"lora_down": lk.LORA_A, "lora_up": lk.LORA_B}


def _parse(key: str) -> tuple[str, str, str] | None:
    """key -> (original module path, tensor kind, layout), or None when it is not a 1.5 adapter key."""
    m = _SUFFIX.search(key)
    if m is None:
        return None
    kind = next(g for g in m.groups() if g)
    stem = key[:m.start()]
    for prefix, layout in _PREFIXES:
        if stem.startswith(prefix):  # peft around the whole model adds "decoder." (LyCORIS: "decoder_")
            rest = stem[len(prefix):]
            module = lk.v15_module(rest.removeprefix("decoder.").removeprefix("decoder_"))
            if module is not None:
                return module, _CANONICAL.get(kind, kind), layout
    return None


def looks_like_v15(keys) -> bool:
    """True when any key names an ACE-Step 1.5 decoder adapter tensor (the export family test)."""
    return any(_parse(k) is not None for k in keys)


@dataclass
class Adapter15:
    """A 1.5 adapter read from disk, keyed by original module paths (`layers.0.self_attn.q_proj`)."""

    path: Path
    layout: str
    kind: str  # "lora" or "lokr"
    modules: dict[str, dict[str, torch.Tensor]]  # module -> {"lora_A", "lora_B"[, magnitude | dora_scale]} / lokr_*
    scales: dict[str, float]  # module -> the source trainer's multiplier on B @ A / kron(w1, w2)
    scale_source: str
    config: dict | None = None  # the peft config found, if any
    metadata: dict = field(default_factory=dict)

    @property
    def width(self) -> int | None:
        """The decoder's hidden size, read from the shapes (input width of a self-attention projection)."""
        for module, parts in sorted(self.modules.items()):
            if ".self_attn." in module:
                if lk.LORA_A in parts:
                    return parts[lk.LORA_A].shape[1]
                w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_b"]
                w2 = parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_b"]
                return w1.shape[1] * w2.shape[1]
        return None

    @property
    def dora(self) -> bool:
        return any(lk.MAGNITUDE in p or lk.DORA_SCALE in p for p in self.modules.values())


def lokr_rank(parts: dict) -> int | None:
    """The rank ComfyUI divides `.alpha` by: of the decomposed w2, else of the decomposed w1, else None."""
    if "lokr_w2_b" in parts:
        return parts["lokr_w2_b"].shape[0]
    if "lokr_w1_b" in parts:
        return parts["lokr_w1_b"].shape[0]
    return None


def resolve_adapter_file(path: str | Path) -> Path:
    """A `.safetensors` file, or the weights inside a folder (acetune's or peft's `save_pretrained` name)."""
    path = Path(path)
    if path.is_dir():
        for name in (lk.LORA_WEIGHTS_FILE, lk.ADAPTER_WEIGHTS_FILE):
            if (path / name).is_file():
                return path / name
        raise InputError(f"no {lk.LORA_WEIGHTS_FILE} or {lk.ADAPTER_WEIGHTS_FILE} in this folder", path=path,
                         fix="pass the adapter .safetensors file or the folder holding it")
    if not path.is_file():
        raise InputError("LoRA file not found", path=path, fix="pass a .safetensors file or its folder")
    return path


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several error types for a bad header
        raise InputError(f"not a readable safetensors file ({e.__class__.__name__})", path=path,
                         fix="pass the adapter .safetensors file") from None


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return shown + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def group_keys(tensors: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], str]:
    """`{module: {kind: tensor}}` and the layout; InputError naming every key that does not map."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    layouts, unknown = set(), []
    for key, tensor in tensors.items():
        parsed = _parse(key)
        if parsed is None:
            unknown.append(key)
            continue
        module, kind, layout = parsed
        if kind in grouped.setdefault(module, {}):
            raise InputError(f"adapter module {module!r} appears twice (key {key!r})", path=path,
                             fix="keep one copy of each module's tensors")
        grouped[module][kind] = tensor
        layouts.add(layout)
    if unknown:
        raise InputError(f"{len(unknown)} of {len(tensors)} keys are not ACE-Step 1.5 decoder LoRA/LoKr/DoRA keys "
                         f"we can map: {_name_keys(sorted(unknown))}", path=path,
                         fix="supported: lora_A/B, lora_down/up, lokr_w1/w2(_a/_b), alpha, DoRA magnitude, "
                             "on layers.N.{self_attn,cross_attn}.{q,k,v,o}_proj and mlp.{gate,up,down}_proj")
    if not grouped:
        raise InputError("no adapter tensors in this file", path=path, fix="pass a LoRA .safetensors file")
    if len(layouts) > 1:
        raise InputError(f"keys mix layouts ({', '.join(sorted(layouts))})", path=path,
                         fix="convert one adapter file at a time")
    return grouped, layouts.pop()


def _check_module(module: str, parts: dict, path: Path) -> str:
    """"lora" or "lokr"; InputError for an incomplete or inconsistent module."""
    lokr = [p for p in parts if p.startswith("lokr_")]
    if lokr:
        has_w1 = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= set(parts)
        has_w2 = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= set(parts)
        if not (has_w1 and has_w2) or lk.LORA_A in parts or lk.LORA_B in parts:
            raise InputError(f"LoKr module {module!r} has {sorted(parts)}: needs w1 (or w1_a, w1_b) and w2 (or w2_a, "
                             "w2_b)", path=path, fix="the file is incomplete; export it again")
        if lk.MAGNITUDE in parts or lk.DORA_SCALE in parts:
            raise InputError(f"LoKr module {module!r} with DoRA tensors is not supported", path=path,
                             fix="export the LoKr without weight decomposition")
        return "lokr"
    if lk.LORA_A not in parts or lk.LORA_B not in parts:
        raise InputError(f"LoRA module {module!r} lacks its {lk.LORA_B if lk.LORA_A in parts else lk.LORA_A} tensor",
                         path=path, fix="the file is incomplete; export it again")
    a, b = parts[lk.LORA_A], parts[lk.LORA_B]
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise InputError(f"LoRA module {module!r}: A {tuple(a.shape)} and B {tuple(b.shape)} are not a linear LoRA "
                         "pair", path=path, fix="only linear-layer LoRAs are supported")
    return "lora"


def find_config(path: Path, metadata: dict, config_path: str | Path | None) -> tuple[dict | None, str]:
    """(peft config dict, where it came from): explicit, embedded (diffusers metadata), or beside the file."""
    if config_path:
        return _load_config(Path(config_path)), str(config_path)
    if lk.ADAPTER_METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[lk.ADAPTER_METADATA_KEY])
        except ValueError:
            embedded = None
        if isinstance(embedded, dict):  # diffusers prefixes every field with "transformer."
            embedded = {k.removeprefix(lk.V15_DIFFUSERS_PREFIX): v for k, v in embedded.items()}
            if "r" in embedded:
                return embedded, "safetensors metadata"
    beside = path.parent / lk.ADAPTER_CONFIG_FILE
    if beside.is_file():
        return _load_config(beside), lk.ADAPTER_CONFIG_FILE
    return None, ""


def _load_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read adapter config ({e.__class__.__name__})", path=path,
                         fix="pass the peft adapter_config.json written with the adapter") from None
    if not isinstance(data, dict) or "r" not in data or not ({"lora_alpha", "alpha"} & set(data)):
        raise InputError("adapter config lacks r or lora_alpha", path=path,
                         fix="pass the peft adapter_config.json written with the adapter")
    return data


def _pattern(config: dict, name: str, module: str, default):
    """A rank/alpha pattern entry matching the module in either spelling."""
    pattern = config.get(name)
    value = pattern_value(pattern, module, None)
    return value if value is not None else pattern_value(pattern, lk.v15_diffusers_module(module), default)


def _config_scale(config: dict, module: str, parts: dict, kind: str, path: Path, source: str) -> float:
    rank = parts[lk.LORA_A].shape[0] if kind == "lora" else None
    r_cfg = _pattern(config, "rank_pattern", module, config["r"])
    if kind == "lora":
        if r_cfg != rank:
            raise InputError(f"adapter config ({source}) says r={r_cfg} but module {module!r} has rank {rank}",
                             path=path, fix="use the adapter config this LoRA was trained with")
        alpha = _pattern(config, "alpha_pattern", module, config.get("lora_alpha", 8))
        return peft_scale(alpha, r_cfg, bool(config.get("use_rslora", False)))
    alpha = _pattern(config, "alpha_pattern", module, config.get("alpha", config.get("lora_alpha", 8)))
    return alpha / r_cfg  # peft LoKr: alpha / r whether or not a factor is decomposed


def read_adapter_15(path: str | Path, config_path: str | Path | None = None, assume_baked: bool = False) -> Adapter15:
    """Read a 1.5 adapter file or folder in any layout above; InputError (one line naming the file) otherwise."""
    path = resolve_adapter_file(path)
    tensors, metadata = read_safetensors(path)
    grouped, layout = group_keys(tensors, path)
    check_finite(tensors, path)
    kinds = {module: _check_module(module, parts, path) for module, parts in grouped.items()}
    if len(set(kinds.values())) > 1:
        raise InputError("the file mixes LoRA and LoKr modules", path=path, fix="convert one adapter kind at a time")
    kind = next(iter(kinds.values()))
    ours = ACETUNE_FAMILY_METADATA in metadata  # our ComfyUI exports: scale baked (or in .alpha)
    config, config_source = find_config(path, metadata, config_path) if config_path or not ours else (None, "")
    baked = assume_baked or ours or layout in _COMFYUI_ONLY
    scales, sources = {}, set()
    for module, parts in grouped.items():
        if lk.ALPHA in parts:
            alpha = float(parts.pop(lk.ALPHA).float().reshape(-1)[0])
            rank = parts[lk.LORA_A].shape[0] if kind == "lora" else lokr_rank(parts)
            scales[module] = alpha / rank if rank else 1.0
            sources.add(".alpha tensors")
        elif config is not None:
            scales[module] = _config_scale(config, module, parts, kind, path, config_source)
            sources.add(config_source)
        elif baked:
            scales[module] = 1.0
            sources.add("none: scale 1 (baked)")
        else:
            raise InputError("no adapter config found (nor .alpha tensors), so the LoRA scale is unknown", path=path,
                             fix=f"pass --lora_config_path, put {lk.ADAPTER_CONFIG_FILE} next to it, "
                                 "or --assume_baked if the scale is already in the weights")
        if not math.isfinite(scales[module]):
            raise InputError(f"module {module!r} has a non-finite scale", path=path, fix="check its .alpha / config")
    return Adapter15(path, layout, kind, grouped, scales, " + ".join(sorted(sources)), config, metadata)
