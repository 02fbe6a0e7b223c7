"""`acetune train` glue for ACE-Step 1.5: LoRA or LoKr setup, int8 base weights, `--init_lora`.

The shared trainer (`stages/train.py`) asks the family for these when it has them:

    family.add_training_adapter(model, config, kind, lora_dtype) -> AdapterSetup
        LoRA (`training.lora.add_lora`) or LoKr (`peft.LoKrConfig`), keyed by the DiT's own module paths
    family.quantize_int8(model) -> int
        optimum-quanto int8 weights for every Linear of the DiT layers (before the adapter is added)
    setup.init_from_file(model, path) -> int
        start from an existing 1.5 adapter in any layout `lora.import_15` reads (step folder, diffusers,
        ComfyUI, official peft, Side-Step, LyCORIS)

Saved layout (what checkpoints hold): `<module>.lora_A.weight` / `.lora_B.weight` for LoRA,
`<module>.lokr_w1` / `.lokr_w2` (or `_a` / `_b` factors) for LoKr, with the module paths of
`AceStepTransformer1DModel` (`layers.0.self_attn.to_q`), and adapter_config.json beside.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from acetune.errors import UsageError
from acetune.lora.check import check_finite
from acetune.models.v15.adapters import (
    adapter_state,
)
from acetune.training.quantize import quantize_linears_int8

logger = logging.getLogger(__name__)

ADAPTER_KINDS = ("lora", "lokr")
DIFFUSERS_PREFIX = "transformer."
_LORA_FACTORS = (".lora_A.", ".lora_B.")


def adapter_scale_of(config: dict) -> float:
    """peft's multiplier for a config dict: LoRA lora_alpha / r (/ sqrt(r) with rsLoRA), LoKr alpha / r."""
    r = int(config["r"])
    if "lora_alpha" in config or "alpha" not in config:
        alpha = float(config.get("lora_alpha", 8))
        return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return float(config["alpha"]) / r


class AdapterSetup:
    """The shared trainer's setup object for a 1.5 adapter (`training.lora.LoraSetup` interface).

    Wraps a `LoraSetup` (its `adapter_name`, `config`, `names`, `params`, `embedder_names`) and keys
    the saved state by this model's module paths, for LoRA and LoKr alike.
    """

    def __init__(self, setup):
        self._setup = setup

    def __getattr__(self, name):
        return getattr(self._setup, name)

    @property
    def kind(self) -> str:
        return "lokr" if "lora_alpha" not in self._setup.config and "alpha" in self._setup.config else "lora"

    def lora_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in adapter_state(model, self._setup.adapter_name).items()}

    def _ours(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """Saved-layout key -> the adapter's parameter."""
        name_ = self._setup.adapter_name
        out = {}
        for name, param in model.named_parameters():
            if name.endswith(f".lora_magnitude_vector.{name_}.weight"):  # DoRA: saved as `<module>.lora_magnitude_vector`
                out[name[: -len(f".{name_}.weight")]] = param
            elif name.endswith(f".{name_}.weight") and any(f in name for f in _LORA_FACTORS):
                out[name.replace(f".{name_}.weight", ".weight")] = param
            elif name.endswith(f".{name_}") and ".lokr_" in name:
                out[name[: -len(name_) - 1]] = param
        return out

    @torch.no_grad()
    def load_lora_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy a `lora_state` dict back bit for bit (resume); the tensor sets must match exactly."""
        ours = self._ours(model)
        if set(ours) != set(state):
            raise UsageError(f"the saved adapter has {len(state)} tensors, this run {len(ours)}",
                             fix="resume with the same LoRA config and --adapter")
        for key, param in ours.items():
            param.copy_(state[key])

    @torch.no_grad()
    def init_from_file(self, model: torch.nn.Module, path: str | Path) -> int:
        """`--init_lora`: copy an existing adapter in so its delta is reproduced under this run's scale.

        LoRA: A and B times sqrt(scale_file / scale_run); LoKr: w1 (or w1_a) times scale_file / scale_run.
        Returns the number of modules loaded. Modules of the run missing from the file start fresh (logged);
        modules the run does not adapt, another adapter kind or other shapes are `UsageError`s.
        """
        from acetune.lora import keys as lk
        from acetune.lora.import_15 import read_adapter_15

        adapter = read_adapter_15(path)  # any 1.5 layout; per-module scale from .alpha, config or baked
        run_scale = adapter_scale_of(self._setup.config)
        state, factors = {}, {}
        for module, parts in adapter.modules.items():
            prefix = lk.v15_diffusers_module(module)
            for kind, tensor in parts.items():
                key = f"{prefix}.{kind}.weight" if kind in (lk.LORA_A, lk.LORA_B) else f"{prefix}.{kind}"
                state[key], factors[key] = tensor, adapter.scales[module] / run_scale
        check_finite(state, path, "--init_lora")
        ours = self._ours(model)
        extra = sorted(set(state) - set(ours))
        if extra:
            raise UsageError(f"--init_lora holds {len(extra)} tensors this {self.kind} setup does not train "
                             f"(first: {extra[0]})", path=path,
                             fix="use the --adapter and target_modules the file was trained with")
        for key, value in state.items():
            dst, factor = ours[key], factors[key]
            if tuple(value.shape) != tuple(dst.shape):
                raise UsageError(f"--init_lora tensor {key} has shape {tuple(value.shape)}, this run "
                                 f"{tuple(dst.shape)}", path=path, fix="set the LoRA config's r to the file's rank")
            if any(f in key for f in _LORA_FACTORS):
                value = value.float() * math.sqrt(factor)
            elif key.endswith((".lokr_w1", ".lokr_w1_a")):
                value = value.float() * factor
            dst.copy_(value)
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
        every = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in ours}
        if len(every) > len(modules):
            logger.warning("%s: %d adapted modules are not in the file and start fresh", path, len(every) - len(modules))
        return len(modules)


def add_training_adapter(model: torch.nn.Module, config: dict, kind: str = "lora",
                         lora_dtype: torch.dtype = torch.float32, adapter_name: str = "lora_adapter") -> AdapterSetup:
    """Add a LoRA or LoKr adapter to the 1.5 DiT for `acetune train`; only its tensors are trainable.

    Args:
        config: the LoRA config JSON as a dict (`training.lora.load_lora_config`); for LoKr it is mapped
            by `training.lora.lokr_kwargs` (lora_alpha -> alpha).
        lora_dtype: dtype of the trainable tensors.
    """
    from acetune.training.lora import LoraSetup, add_lora, lokr_kwargs

    if kind == "lora":
        return AdapterSetup(add_lora(model, config, adapter_name=adapter_name, lora_dtype=lora_dtype))
    if kind != "lokr":
        raise UsageError(f"unknown adapter {kind!r}", fix=f"choose one of {', '.join(ADAPTER_KINDS)}")
    from peft import LoKrConfig

    kwargs = lokr_kwargs(config)
    model.requires_grad_(False)
    try:
        model.add_adapter(LoKrConfig(**kwargs), adapter_name=adapter_name)
    except ValueError as err:
        raise UsageError(f"LoKr target_modules {kwargs.get('target_modules')} do not match the model ({err})",
                         fix="use module names such as to_q, to_k, to_v, to_out.0, gate_proj") from None
    names, params = [], []
    for name, param in model.named_parameters():
        trainable = ".lokr_" in name
        param.requires_grad_(trainable)
        if trainable:
            param.data = param.data.to(lora_dtype)
            names.append(name)
            params.append(param)
    saved = {**kwargs, "target_modules": sorted(kwargs.get("target_modules") or []), "peft_type": "LOKR"}
    return AdapterSetup(LoraSetup(adapter_name, saved, names, params, []))


def quantize_int8(model: torch.nn.Module) -> int:
    """int8 weights (optimum-quanto) for every Linear of the DiT layers; returns how many. Before the adapter."""
    return quantize_linears_int8(model.layers)
