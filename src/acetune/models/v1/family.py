"""The ACE-Step v1 (3.5B) model family (see `acetune.models.family.ModelFamily`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from acetune.errors import CheckpointError
from acetune.layout import (
    CONFIG_FILE,
    V1_COMPONENT_DIRS,
    V1_DCAE_DIR,
    V1_TEXT_ENCODER_DIR,
    V1_TRANSFORMER_DIR,
    V1_VOCODER_DIR,
)
from acetune.models.v1.loading import default_config, load_transformer, read_config, weight_files

# The fork's `trainer_new.py` default (config/lora_config_transformer_only.json): both attentions of
# every transformer block. Adding the Conformer's attention gives the fork's lora_config.json.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS_WITH_LYRICS = LORA_TARGETS + ("linear_q", "linear_k", "linear_v")

# Files the text encoder folder must hold (as the official release ships it).
TEXT_ENCODER_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                      "tokenizer_config.json")
_FIX = "download the complete ACE-Step/ACE-Step-v1-3.5B checkpoint (all four component folders)"


class V1Family:
    """ACE-Step v1: `ace_step_transformer/`, `music_dcae_f8c8/`, `music_vocoder/`, `umt5-base/`."""

    name = "ace-step-v1"
    default_lora_targets = LORA_TARGETS

    def detect(self, checkpoint_dir: Path) -> bool:
        config = Path(checkpoint_dir) / V1_TRANSFORMER_DIR / CONFIG_FILE
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("_class_name") in (
                "Transformer2DModel", "ACEStepTransformer2DModel")
        except (OSError, ValueError, AttributeError):
            return False

    def check_checkpoint(self, checkpoint_dir: Path) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        for sub in V1_COMPONENT_DIRS:
            if not (checkpoint_dir / sub).is_dir():
                raise CheckpointError(f"missing folder {sub}/", path=checkpoint_dir / sub, fix=_FIX)
        read_config(checkpoint_dir / V1_TRANSFORMER_DIR)
        for sub in (V1_TRANSFORMER_DIR, V1_DCAE_DIR, V1_VOCODER_DIR):
            if not (checkpoint_dir / sub / CONFIG_FILE).is_file():
                raise CheckpointError(f"missing {CONFIG_FILE}", path=checkpoint_dir / sub / CONFIG_FILE, fix=_FIX)
            weight_files(checkpoint_dir / sub)
        for name in TEXT_ENCODER_FILES:
            if not (checkpoint_dir / V1_TEXT_ENCODER_DIR / name).is_file():
                raise CheckpointError(f"missing {name}", path=checkpoint_dir / V1_TEXT_ENCODER_DIR / name, fix=_FIX)

    def load_transformer(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", drop_unused: bool = False) -> torch.nn.Module:
        return load_transformer(Path(checkpoint_dir) / V1_TRANSFORMER_DIR, dtype=dtype, device=device,
                                drop_unused=drop_unused)

    def config_hash(self, checkpoint_dir: Path) -> str:
        """sha256 (16 hex digits) of the resolved transformer config (defaults filled, `inner_dim` dropped)."""
        resolved = {**default_config(), **read_config(Path(checkpoint_dir) / V1_TRANSFORMER_DIR)}
        resolved.pop("inner_dim", None)
        canonical = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
                               sort_keys=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


FAMILY = V1Family()
