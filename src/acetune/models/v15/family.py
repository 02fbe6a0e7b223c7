"""The ACE-Step 1.5 model family (see `acetune.models.family.ModelFamily`), through diffusers.

The checkpoint is a diffusers `AceStepPipeline` folder (`layout.py`). Beyond the shared interface
(detect, check, load the DiT, config hash) this family exposes the hooks the stages call:

    preprocess:  load_encoders(dir) -> pipe;  encode_song(pipe, wav, SongText) -> EncodedSong
    train:       silence_latent(dir);  collate(rows, silence);  training_loss(transformer, batch, gen)
                 adapter_config(kind, rank, alpha, ...);  add_adapter(transformer, config)
    export:      save_diffusers_lora(transformer, folder, config);  save_comfyui(state, path, config)
    generate:    load_pipeline(dir);  generate(pipe, prompt, lyrics, duration, ..., lora_file=...)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from acetune.errors import CheckpointError
from acetune.models.v15 import adapters, conditioning, generate, objective
from acetune.models.v15.layout import (
    CONDITION_ENCODER_DIR,
    MODEL_INDEX_FILE,
    PIPELINE_CLASS,
    REQUIRED_DIRS,
    TRANSFORMER_DIR,
)
from acetune.schema_v15 import FAMILY_NAME

_FIX = "download the complete diffusers ACE-Step 1.5 folder (e.g. ACE-Step/acestep-v15-turbo-diffusers)"
CONFIG_FILE = "config.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path.name}", path=path, fix=_FIX) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable {path.name} ({e})", path=path, fix=_FIX) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object", path=path, fix=_FIX)
    return data


class V15Family:
    """ACE-Step 1.5 (turbo / base / sft, 2B and XL): a diffusers `AceStepPipeline` folder."""

    name = FAMILY_NAME
    default_lora_targets = adapters.LORA_TARGETS

    # hooks (module functions; see the module docstring)
    load_encoders = staticmethod(conditioning.load_encoders)
    encode_song = staticmethod(conditioning.encode_song)
    song_text = staticmethod(conditioning.SongText.from_song)
    collate = staticmethod(objective.collate)
    adapter_config = staticmethod(adapters.adapter_config)
    add_adapter = staticmethod(adapters.add_adapter)
    adapter_state = staticmethod(adapters.adapter_state)
    save_diffusers_lora = staticmethod(adapters.save_diffusers_lora)
    save_comfyui = staticmethod(adapters.save_comfyui)
    load_pipeline = staticmethod(generate.load_pipeline)
    generate = staticmethod(generate.generate)

    def detect(self, checkpoint_dir: Path) -> bool:
        try:
            index = json.loads((Path(checkpoint_dir) / MODEL_INDEX_FILE).read_text(encoding="utf-8"))
            return index.get("_class_name") == PIPELINE_CLASS
        except (OSError, ValueError, AttributeError):
            return False

    def check_checkpoint(self, checkpoint_dir: Path) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        index = _read_json(checkpoint_dir / MODEL_INDEX_FILE)
        if index.get("_class_name") != PIPELINE_CLASS:
            raise CheckpointError(f"model_index.json names {index.get('_class_name')!r}, not {PIPELINE_CLASS}",
                                  path=checkpoint_dir / MODEL_INDEX_FILE, fix=_FIX)
        for sub in REQUIRED_DIRS:
            if not (checkpoint_dir / sub).is_dir():
                raise CheckpointError(f"missing folder {sub}/", path=checkpoint_dir / sub, fix=_FIX)
        for sub in (TRANSFORMER_DIR, CONDITION_ENCODER_DIR):
            _read_json(checkpoint_dir / sub / CONFIG_FILE)
            if not any((checkpoint_dir / sub).glob("*.safetensors")):
                raise CheckpointError("no .safetensors weights", path=checkpoint_dir / sub, fix=_FIX)

    def load_transformer(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", drop_unused: bool = False) -> torch.nn.Module:
        """`AceStepTransformer1DModel` in eval mode (`drop_unused` has nothing to drop in 1.5)."""
        from diffusers import AceStepTransformer1DModel

        self.check_checkpoint(checkpoint_dir)
        model = AceStepTransformer1DModel.from_pretrained(str(Path(checkpoint_dir) / TRANSFORMER_DIR), dtype=dtype)
        return model.to(device).eval()

    def prepare_for_training(self, model: torch.nn.Module, *, use_ssl: bool = False,
                             drop_lyric_path: bool = False) -> dict[str, int]:
        """Nothing to free: the 1.5 DiT holds no SSL heads and no lyric encoder (preprocess ran those)."""
        return {}

    def training_loss(self, model: torch.nn.Module, batch: dict, *, shift: float = 3.0, ssl_coeff: float = 0.0,
                      noise: torch.Tensor | None = None, u: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> objective.V15Loss:
        """The official 1.5 objective (`objective.flow_matching_loss`); `u` replaces the timestep draw.

        `shift` and `ssl_coeff` belong to v1: the 1.5 trainer samples the fixed turbo shift-3 table.
        """
        return objective.flow_matching_loss(model, batch, generator=generator, noise=noise, t=u)

    def silence_latent(self, checkpoint_dir: Path) -> torch.Tensor:
        """(1, N, C) `AceStepConditionEncoder.silence_latent`, read alone from its safetensors (no model)."""
        from safetensors import safe_open

        for path in sorted((Path(checkpoint_dir) / CONDITION_ENCODER_DIR).glob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                if "silence_latent" in f.keys():
                    return f.get_tensor("silence_latent").float()
        raise CheckpointError("the condition encoder has no silence_latent tensor",
                              path=Path(checkpoint_dir) / CONDITION_ENCODER_DIR, fix=_FIX)

    def config_hash(self, checkpoint_dir: Path) -> str:
        """sha256 (16 hex digits) of the transformer and condition-encoder configs (`_`-keys dropped)."""
        configs = {}
        for sub in (TRANSFORMER_DIR, CONDITION_ENCODER_DIR):
            data = _read_json(Path(checkpoint_dir) / sub / CONFIG_FILE)
            configs[sub] = {k: v for k, v in data.items() if not k.startswith("_")}
        return hashlib.sha256(json.dumps(configs, sort_keys=True).encode("utf-8")).hexdigest()[:16]


FAMILY = V15Family()
