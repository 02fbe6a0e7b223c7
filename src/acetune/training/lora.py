"""LoRA on the transformer: the peft config, what is trainable, and starting from an existing LoRA.

- `load_lora_config(path)`: the JSON the fork's `--lora_config_path` points at (`r`, `lora_alpha`,
  `target_modules`, `use_rslora`, any other `peft.LoraConfig` field).
- `add_lora(model, config)`: `add_adapter` as the fork does (diffusers `PeftAdapterMixin`), then
  only LoRA tensors (plus, with `train_lyrics_embedder`, the lyric embedding/Conformer/projection)
  stay trainable, kept in fp32 over bf16 base weights (diffusers `training_utils.cast_training_params`).
- `init_lora_from_file(model, path)`: continue from a LoRA file in any key form `lora_keys` parses;
  the delta it encodes is reproduced exactly under this run's scale (rank must match).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from acetune.errors import InputError, UsageError
from acetune.lora.check import check_finite
from acetune.lora.keys import (
    ADAPTER_CONFIG_FILE,
    ALPHA,
    DORA_SCALE,
    LORA_A,
    LORA_B,
    LORA_WEIGHTS_FILE,
    MAGNITUDE,
    saved_lora_state_dict,
    split_modules,
)

logger = logging.getLogger(__name__)

ADAPTER_NAME = "lora_adapter"  # the fork's default `adapter_name`
# --train_lyrics_embedder: every parameter under these modules is trained too (as SimpleTuner's
# `lyrics_embedder_train`); they are saved with the training state, not in the LoRA file.
LYRICS_EMBEDDER_MODULES = ("lyric_embs", "lyric_encoder", "lyric_proj")
_LORA_FIELDS_REQUIRED = ("r", "target_modules")


def lokr_kwargs(config: dict) -> dict:
    """A LoRA-style config dict as `peft.LoKrConfig` keyword arguments (`--adapter lokr`).

    `lora_alpha` becomes `alpha` and `lora_dropout` `module_dropout` (unless given); LoKr fields
    (`decompose_both`, `decompose_factor`, ...) pass through; LoRA-only fields (`use_rslora`, ...) are dropped.
    """
    import dataclasses

    from peft import LoKrConfig

    known = {f.name for f in dataclasses.fields(LoKrConfig)} - {"peft_type", "task_type", "auto_mapping", "revision"}
    out = {k: v for k, v in config.items() if k in known}
    out.setdefault("alpha", config.get("lora_alpha", 8))
    if "lora_dropout" in config:
        out.setdefault("module_dropout", config["lora_dropout"])
    return out


def load_lora_config(path: str | Path, kind: str = "lora") -> dict:
    """Read and check a LoRA config JSON; returns the dict (peft `LoraConfig` keyword arguments).

    kind "lokr": the JSON may also hold LoKr fields (`alpha`, `decompose_factor`, ...); it is checked
    as a `LoKrConfig` through `lokr_kwargs` and returned as read.
    """
    from peft import LoKrConfig, LoraConfig

    path = Path(path)
    if not path.is_file():
        raise UsageError("LoRA config not found", path=path,
                         fix="pass --lora_config_path config/lora_config_transformer_only.json (or your own JSON)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read the LoRA config ({err})", path=path, fix="fix the JSON syntax") from None
    if not isinstance(config, dict):
        raise UsageError("LoRA config must be a JSON object", path=path)
    missing = [k for k in _LORA_FIELDS_REQUIRED if k not in config]
    if missing:
        raise UsageError(f"LoRA config lacks {', '.join(missing)}", path=path,
                         fix='e.g. {"r": 64, "lora_alpha": 1, "use_rslora": true, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}')
    try:
        LoKrConfig(**lokr_kwargs(config)) if kind == "lokr" else LoraConfig(**config)
    except (TypeError, ValueError) as err:
        raise UsageError(f"not a valid peft {'LoKrConfig' if kind == 'lokr' else 'LoraConfig'} ({err})",
                         path=path) from None
    if not isinstance(config["r"], int) or config["r"] < 1:
        raise UsageError(f"LoRA rank r must be a positive integer, got {config['r']!r}", path=path)
    return config


def lora_scale(config: dict) -> float:
    """peft's scaling: lora_alpha / sqrt(r) with rsLoRA, else lora_alpha / r (lora_alpha defaults to 8)."""
    alpha, r = float(config.get("lora_alpha", 8)), int(config["r"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def touches_lyric_encoder(model: torch.nn.Module) -> bool:
    """True when any trainable parameter lives in the lyric path (then its output cannot be cached)."""
    return any(p.requires_grad and name.startswith(LYRICS_EMBEDDER_MODULES) for name, p in model.named_parameters())


@dataclass
class LoraSetup:
    """What `add_lora` did: the trainable tensors in a fixed order (optimizer ids follow it)."""

    adapter_name: str
    config: dict
    names: list[str]
    params: list[torch.nn.Parameter]
    embedder_names: list[str]  # subset of `names` that are full (non-LoRA) lyric-path weights

    def lora_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """LoRA weights in the saved layout (`<module>.lora_A.weight`), as trained (not baked)."""
        return saved_lora_state_dict(model, self.adapter_name)

    def load_lora_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy saved-layout tensors (`<module>.lora_A.weight`, exactly as `lora_state` returns) into the
        adapter, bit for bit (resume). Every adapted module must be present, and nothing else."""
        ours = _lora_module_params(model, self.adapter_name)
        parts = split_modules(state, path="<LoRA state>")
        if set(parts) != set(ours):
            raise UsageError(f"the saved LoRA adapts {len(parts)} modules, this run {len(ours)}",
                             fix="resume with the same LoRA config")
        with torch.no_grad():
            for module, tensors in parts.items():
                if set(tensors) - {ALPHA} != set(ours[module]):
                    raise UsageError(f"the saved LoRA module {module} has {sorted(tensors)}, this run "
                                     f"{sorted(ours[module])}", fix="resume with the same LoRA config and --dora")
                for kind, param in ours[module].items():
                    param.copy_(tensors[kind].reshape(param.shape))

    def embedder_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach() for n in self.embedder_names}

    def load_embedder_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.embedder_names:
                params[name].copy_(state[name])


def add_lora(model: torch.nn.Module, config: dict, *, adapter_name: str = ADAPTER_NAME,
             train_lyrics_embedder: bool = False, lora_dtype: torch.dtype = torch.float32) -> LoraSetup:
    """Add a peft LoRA to `model` and make exactly the LoRA tensors trainable.

    Args:
        model: a model with diffusers' `PeftAdapterMixin.add_adapter` (the v1 transformer).
        config: from `load_lora_config`.
        train_lyrics_embedder: also train every weight of `LYRICS_EMBEDDER_MODULES` (full fine-tune).
        lora_dtype: dtype of the trainable tensors (fp32 over bf16 base weights; bf16 for `--precision bf16`).
    Raises UsageError when `target_modules` match nothing in the model.
    """
    from peft import LoraConfig

    model.requires_grad_(False)
    try:
        model.add_adapter(LoraConfig(**config), adapter_name=adapter_name)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        raise UsageError(f"LoRA target_modules {config['target_modules']} do not match the model ({err})",
                         fix="use module names such as to_q, to_k, to_v, to_out.0, linear_q") from None
    names, params, embedder = [], [], []
    for name, param in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name or f".{MAGNITUDE}." in name  # DoRA: magnitude too
        is_embedder = train_lyrics_embedder and not is_lora and name.startswith(LYRICS_EMBEDDER_MODULES)
        param.requires_grad_(is_lora or is_embedder)
        if is_lora or is_embedder:
            param.data = param.data.to(lora_dtype)
            names.append(name)
            params.append(param)
            if is_embedder:
                embedder.append(name)
    if not any(".lora_" in n for n in names):
        raise UsageError("the LoRA config adapts no module of this model",
                         fix=f"check target_modules {config['target_modules']}")
    return LoraSetup(adapter_name, dict(config), names, params, embedder)


@contextlib.contextmanager
def lora_input_casting(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch peft's cast of every LoRA layer's input to the LoRA weights' dtype on or off, restored on exit.

    Under autocast the cast is pure overhead: peft copies the bf16 input to fp32 for fp32 LoRA weights,
    then autocast copies it back to bf16 for `lora_A` (a lossless round trip, and its mirror image in the
    backward): 4 activation-sized copies per adapted layer and pass, ~10% of a bf16 step. Turn it off
    only while every forward runs under autocast (the training loop); without autocast a bf16 input
    would meet fp32 weights.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = enabled
    try:
        yield
    finally:
        for m, value in zip(layers, before):
            m.cast_input_dtype_enabled = value


def _lora_module_params(model: torch.nn.Module, adapter_name: str) -> dict[str, dict[str, torch.nn.Parameter]]:
    """{module path: {"lora_A": param, "lora_B": param[, "lora_magnitude_vector": param]}} of the adapter."""
    out: dict[str, dict[str, torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        for kind in (LORA_A, LORA_B, MAGNITUDE):
            tag = f".{kind}.{adapter_name}.weight"
            if name.endswith(tag):
                out.setdefault(name[: -len(tag)], {})[kind] = param
    return out


def _file_scale(path: Path, parts: dict[str, dict[str, torch.Tensor]]) -> float:
    """The scale the file's own loader applies to B @ A.

    A file with `adapter_config.json` beside it (our checkpoints, diffusers/peft saves) is un-baked:
    its config's scale. Otherwise ComfyUI's rule: alpha / rank when an `.alpha` tensor exists, else 1
    (a baked export).
    """
    sidecar = path.parent / ADAPTER_CONFIG_FILE
    if sidecar.is_file():
        try:
            return lora_scale(json.loads(sidecar.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"unreadable {ADAPTER_CONFIG_FILE} ({err})", path=sidecar) from None
    any_part = next(iter(parts.values()))
    if ALPHA in any_part:
        return float(any_part[ALPHA].float().item()) / any_part[LORA_A].shape[0]
    return 1.0


def init_lora_from_file(model: torch.nn.Module, path: str | Path, setup: LoraSetup) -> int:
    """Copy an existing LoRA into the freshly added adapter; returns the number of modules loaded.

    `path` is a `.safetensors` file or a folder holding `pytorch_lora_weights.safetensors`. Each
    module's delta `scale_file · B A` is reproduced under this run's scale by multiplying both A and
    B by sqrt(scale_file / scale_run). Modules of the run missing from the file keep their fresh
    init (logged); modules of the file the run does not adapt, or a different rank, are errors.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHTS_FILE
    if not path.is_file():
        raise UsageError("--init_lora file not found", path=path, fix="pass a LoRA .safetensors file or its folder")
    try:
        raw = load_file(str(path))
    except Exception as err:  # safetensors' own error types
        raise InputError(f"cannot read LoRA file ({err})", path=path) from None
    ours = _lora_module_params(model, setup.adapter_name)
    parts = split_modules(raw, path=path)
    check_finite(raw, path, "--init_lora")
    if any(MAGNITUDE in p or DORA_SCALE in p for p in parts.values()) or setup.config.get("use_dora"):
        raise UsageError("--init_lora with DoRA is not supported (a DoRA delta is not a LoRA delta)", path=path,
                         fix="start the DoRA run fresh, or use a plain LoRA file and config")
    extra = sorted(set(parts) - set(ours))
    if extra:
        raise UsageError(f"--init_lora adapts {len(extra)} modules this LoRA config does not (first: {extra[0]})",
                         path=path, fix="use a --lora_config_path whose target_modules cover the file's modules")
    rank = int(setup.config["r"])
    factor = math.sqrt(_file_scale(path, parts) / lora_scale(setup.config))
    with torch.no_grad():
        for module, tensors in parts.items():
            a, b = tensors[LORA_A], tensors[LORA_B]
            if a.shape[0] != rank:
                raise UsageError(f"--init_lora has rank {a.shape[0]}, the LoRA config has r {rank}", path=path,
                                 fix=f"set \"r\": {a.shape[0]} in the LoRA config")
            dst = ours[module]
            if tuple(a.shape) != tuple(dst[LORA_A].shape) or tuple(b.shape) != tuple(dst[LORA_B].shape):
                raise UsageError(f"--init_lora module {module} has shapes {tuple(a.shape)}/{tuple(b.shape)}, "
                                 "the model needs others", path=path, fix="the LoRA was trained for another model")
            dst[LORA_A].copy_(a.float() * factor)
            dst[LORA_B].copy_(b.float() * factor)
    missing = len(ours) - len(parts)
    if missing:
        logger.warning("%s: %d adapted modules are not in the file and start fresh", path, missing)
    return len(parts)
