"""LoRA / LoKr adapters on `AceStepTransformer1DModel` and their export for diffusers and ComfyUI.

Targets default to the official 1.5 trainer's (`acestep/training/configs.py` `LoRAConfig`:
q_proj, k_proj, v_proj, o_proj of every DiT layer, self- and cross-attention), spelled with
diffusers' names. Official defaults: r 8, alpha 16, dropout 0.1.

Two files per adapter:

- diffusers layout (`transformer.layers.N.self_attn.to_q.lora_A.weight`, peft config in the
  safetensors metadata), written by `AceStepPipeline.save_lora_weights`, loaded by
  `AceStepPipeline.load_lora_weights`. LoRA only: diffusers refuses keys without "lora".
- ComfyUI layout (`/work/shared/facts/comfyui-lora.md`): the official 1.5 trainer's peft names,
  `base_model.model.layers.N.self_attn.q_proj.lora_A.weight`, with peft's scale baked into the
  weights and no `.alpha` (ComfyUI then applies scale 1.0, and diffusers' own converter for original
  1.5 LoRAs reads the same file). LoKr keys (`lokr_w1`, `lokr_w2`, `lokr_w2_a`, ...) keep
  LyCORIS names; the scale is baked into `lokr_w1` / `lokr_w1_a`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from acetune.lora import keys as lk
from acetune.lora.check import check_finite

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
# diffusers module name -> original 1.5 name (ComfyUI, official trainer); MLP names are shared.
_ORIGINAL_NAMES = {".to_q.": ".q_proj.", ".to_k.": ".k_proj.", ".to_v.": ".v_proj.", ".to_out.0.": ".o_proj."}
COMFYUI_PREFIX = lk.V15_PEFT_PREFIX
DIFFUSERS_WEIGHT_NAME = lk.LORA_WEIGHTS_FILE


def adapter_config(kind: str = "lora", rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                   targets: tuple[str, ...] = LORA_TARGETS, use_rslora: bool = False):
    """A peft config: `LoraConfig` (kind "lora") or `LoKrConfig` (kind "lokr", as Side-Step offers)."""
    from peft import LoKrConfig, LoraConfig

    if kind == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                          init_lora_weights=True, use_rslora=use_rslora)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=list(targets))
    raise ValueError(f"unknown adapter kind {kind!r}")


def add_adapter(transformer, config) -> list[torch.nn.Parameter]:
    """Freeze `transformer`, inject the adapter (fp32 parameters), return the trainable parameters."""
    transformer.requires_grad_(False)
    transformer.add_adapter(config)
    params = []
    for name, p in transformer.named_parameters():
        if "lora_" in name or "lokr_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
    return params


def adapter_state(transformer, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """peft state dict of one adapter (`layers.0.self_attn.to_q.lora_A.weight`, ...), fp32 CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def adapter_scale(config) -> float:
    """peft's multiplier on B @ A (LoRA) or kron(w1, w2) (LoKr)."""
    alpha = config.lora_alpha if hasattr(config, "lora_alpha") else config.alpha
    return alpha / (config.r ** 0.5 if getattr(config, "use_rslora", False) else config.r)


def save_diffusers_lora(transformer, folder: str | Path, config) -> Path:
    """Write the diffusers-layout file `AceStepPipeline.load_lora_weights(folder)` reads; returns its path."""
    from diffusers import AceStepPipeline

    if not hasattr(config, "lora_alpha"):
        raise ValueError("diffusers loads LoRA adapters only; export LoKr in the ComfyUI layout")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    AceStepPipeline.save_lora_weights(folder, transformer_lora_layers=adapter_state(transformer),
                                      weight_name=DIFFUSERS_WEIGHT_NAME,
                                      transformer_lora_adapter_metadata=_config_metadata(config))
    return folder / DIFFUSERS_WEIGHT_NAME


def _config_metadata(config) -> dict:
    """The peft config as JSON-able dict (sets become sorted lists), embedded by diffusers in the file."""
    return json.loads(json.dumps(config.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def original_name(key: str) -> str:
    """diffusers module path -> the original 1.5 one (`layers.0.self_attn.to_out.0.x` -> `...o_proj.x`)."""
    for new, old in _ORIGINAL_NAMES.items():
        key = key.replace(new, old)
    return key


def comfyui_state(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """peft state dict -> ComfyUI 1.5 layout with the scale baked in (see module docstring)."""
    scale = adapter_scale(config)
    out = {}
    for key, value in state.items():
        value = value.float()
        if ".lora_A." in key or ".lora_B." in key:
            value = value * scale ** 0.5  # sqrt(s) on each factor: B A s = (sqrt(s) B)(sqrt(s) A)
        elif key.endswith((".lokr_w1", ".lokr_w1_a")):
            value = value * scale  # kron is linear in w1
        out[COMFYUI_PREFIX + original_name(key)] = value.contiguous()
    return out


def save_comfyui(state: dict[str, torch.Tensor], path: str | Path, config) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(comfyui_state(state, config), str(tmp), metadata={"format": "pt", "acetune_family": "acestep15"})
    tmp.replace(path)
    return path


def comfyui_deltas(state: dict[str, torch.Tensor], strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Weight deltas ComfyUI computes from a ComfyUI-layout file (its `.alpha`/rank rule; none = 1.0).

    Returns original module path (`layers.0.self_attn.q_proj`) -> delta (out, in). Used to check the
    export. A DoRA file's delta depends on the base weights: `merge_comfyui_file` applies those.
    """
    if any(k.endswith(".dora_scale") for k in state):
        raise ValueError("a DoRA file has no weight-independent delta; use merge_comfyui_file")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, leaf = key.removeprefix(COMFYUI_PREFIX).rpartition(".")
        if leaf == "weight":  # lora_A.weight -> module ends in .lora_A
            module, _, leaf = module.rpartition(".")
        groups.setdefault(module, {})[leaf] = value.float()
    deltas = {}
    for module, g in groups.items():
        if "lora_A" in g:
            delta, dim = g["lora_B"] @ g["lora_A"], g["lora_A"].shape[0]
        else:
            w1 = g["lokr_w1"] if "lokr_w1" in g else g["lokr_w1_a"] @ g["lokr_w1_b"]
            w2 = g["lokr_w2"] if "lokr_w2" in g else g["lokr_w2_a"] @ g["lokr_w2_b"]
            dim = g["lokr_w2_b"].shape[0] if "lokr_w2_b" in g else g["lokr_w1_b"].shape[0] if "lokr_w1_b" in g else None
            delta = torch.kron(w1, w2)
        alpha = g["alpha"].item() / dim if "alpha" in g and dim else 1.0
        deltas[module] = strength * alpha * delta
    return deltas


def diffusers_name(original: str) -> str:
    for new, old in _ORIGINAL_NAMES.items():
        original = (original + ".").replace(old, new).rstrip(".")
    return original


@torch.no_grad()
def merge_comfyui_file(transformer, path: str | Path, strength: float = 1.0) -> int:
    """Merge any 1.5 adapter file (every layout `lora.import_15` reads; LoRA, LoKr, DoRA) into `transformer`
    at `strength` as ComfyUI would: W += strength · delta; DoRA: W += strength · (W_dora - W). Returns modules."""
    from acetune.errors import InputError
    from acetune.lora import keys as lk
    from acetune.lora.dora import comfyui_dora_weight, peft_dora_weight
    from acetune.lora.import_15 import read_adapter_15
    from acetune.models.v15.export import delta

    adapter = read_adapter_15(path)
    modules = dict(transformer.named_modules())
    for name in adapter.modules:
        linear = modules.get(lk.v15_diffusers_module(name))
        if linear is None or tuple(linear.weight.shape) != tuple(delta(adapter, name).shape):
            raise InputError(f"adapter module {name} does not fit this model", path=adapter.path,
                             fix="use an adapter trained on this ACE-Step 1.5 checkpoint")
    for name, parts in adapter.modules.items():
        weight = modules[lk.v15_diffusers_module(name)].weight
        d = delta(adapter, name).to(weight.device)
        if lk.MAGNITUDE in parts:
            d = peft_dora_weight(weight, d, parts[lk.MAGNITUDE].to(weight.device)) - weight.double()
        elif lk.DORA_SCALE in parts:
            d = comfyui_dora_weight(weight, d, parts[lk.DORA_SCALE].to(weight.device)) - weight.double()
        weight += (strength * d).to(weight)
    return len(adapter.modules)


# ---- files written by `acetune train` (saved layout: bare diffusers module paths) ----

SAVED_WEIGHTS_FILE = lk.LORA_WEIGHTS_FILE  # as the trainer writes
ADAPTER_CONFIG_FILE = lk.ADAPTER_CONFIG_FILE


def read_trained_lora(path: str | Path):
    """(state with bare keys, peft config) of a training checkpoint folder or a saved-layout file.

    The config is `adapter_config.json` beside the weights (the trainer writes it into every step folder).
    """
    from peft import LoKrConfig, LoraConfig
    from safetensors.torch import load_file

    from acetune.errors import InputError

    path = Path(path)
    weights = path / SAVED_WEIGHTS_FILE if path.is_dir() else path
    config_path = weights.parent / ADAPTER_CONFIG_FILE
    if not weights.is_file() or not config_path.is_file():
        raise InputError(f"need {weights.name} and {ADAPTER_CONFIG_FILE} side by side", path=path,
                         fix="pass a step-NNNNNN folder written by `acetune train`")
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data = {k: v for k, v in data.items() if k not in ("peft_type", "task_type", "auto_mapping", "revision")}
    try:
        config = LoKrConfig(**data) if "alpha" in data and "lora_alpha" not in data else LoraConfig(**data)
    except (TypeError, ValueError) as e:
        raise InputError(f"not a peft adapter config ({e})", path=config_path) from None
    state = load_file(str(weights))
    check_finite(state, weights)
    return state, config
