"""The ACE-Step 1.5 model family (see `acetune.models.family.ModelFamily`), through diffusers.

The checkpoint is a diffusers `AceStepPipeline` folder (`layout.py`). Beyond the shared interface
(detect, check, load the DiT, config hash) this family exposes the hooks the stages call:

    preprocess:  load_encoders(dir) -> pipe;  encode_song(pipe, wav, SongText) -> EncodedSong
                 load_preprocess_encoders / encode_part (what `acetune preprocess` calls; `rows.py`)
    train:       load_transformer(dir);  collate(rows);  training_loss(transformer, batch)
                 training_recipe(dir, timestep_sampling, cfg_dropout) / set_recipe(model, recipe)
                 checkpoint_identity(dir) (what preprocess records) / checkpoint_mismatch(recorded, dir) (train)
                 add_training_adapter(model, config, kind) (LoRA / LoKr);  quantize_int8(model)
                 validation_renderer(transformer, dir) (validation renders through AceStepPipeline)
                 adapter_config(kind, rank, alpha, ...);  add_adapter(transformer, config)
    export:      save_diffusers_lora(transformer, folder, config);  save_comfyui(state, path, config)
                 export_lora(args, path) (what `acetune export` hands a 1.5 step folder to; `export.py`)
    generate:    load_pipeline(dir);  generate(pipe, prompt, lyrics, duration, ..., lora_file=...)
                 generate_song(args, lyrics, seed, out) (what `acetune generate` hands a 1.5 checkpoint to)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from acetune.errors import CheckpointError, TrainingError
from acetune.models.v15 import adapters, conditioning, objective, rows, training, variant
from acetune.models.v15 import generate as generation
from acetune.models.v15.layout import (
    CONDITION_ENCODER_DIR,
    MODEL_INDEX_FILE,
    PIPELINE_CLASS,
    REQUIRED_DIRS,
    TEXT_ENCODER_DIR,
    TRANSFORMER_DIR,
    VAE_DIR,
)
from acetune.models.v15.schema import FAMILY_NAME

_FIX = "download the complete diffusers ACE-Step 1.5 folder (e.g. ACE-Step/acestep-v15-turbo-diffusers)"
CONFIG_FILE = "config.json"
SILENCE_BUFFER = "acetune_silence_latent"
NULL_BUFFER = "acetune_null_condition"
RECIPE_ATTR = "acetune_recipe"  # the objective.Recipe `training_loss` follows (set by load_transformer / set_recipe)


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
    sample_rate = 48000  # AutoencoderOobleck's rate (the checkpoint's vae/config.json says so too)

    # hooks (module functions; see the module docstring)
    load_encoders = staticmethod(conditioning.load_encoders)
    load_preprocess_encoders = staticmethod(rows.load_preprocess_encoders)
    encode_part = staticmethod(rows.encode_part)
    encode_song = staticmethod(conditioning.encode_song)
    song_text = staticmethod(conditioning.SongText.from_song)
    collate = staticmethod(objective.collate)
    adapter_config = staticmethod(adapters.adapter_config)
    add_adapter = staticmethod(adapters.add_adapter)
    adapter_state = staticmethod(adapters.adapter_state)
    save_diffusers_lora = staticmethod(adapters.save_diffusers_lora)
    save_comfyui = staticmethod(adapters.save_comfyui)
    load_pipeline = staticmethod(generation.load_pipeline)
    generate = staticmethod(generation.generate)
    # `acetune train`: LoRA / LoKr keyed by the DiT's module paths, int8 base weights, validation renders
    add_training_adapter = staticmethod(training.add_training_adapter)
    quantize_int8 = staticmethod(training.quantize_int8)
    variant_of = staticmethod(variant.variant_of)  # "turbo" / "base" / "sft": picks the training recipe
    is_xl = staticmethod(variant.is_xl)

    def validation_renderer(self, transformer: torch.nn.Module, checkpoint_dir: Path, **options):
        """`AceStepPipeline` around the in-training DiT (adapter active); see `models.v15.validation`."""
        from acetune.models.v15.validation import validation_renderer

        return validation_renderer(transformer, checkpoint_dir, **options)

    # ---- stage hooks: `acetune export` / `acetune generate` hand over when the family has them ----

    def export_lora(self, args, path: Path, default_output) -> int:
        """`acetune export` for any 1.5 adapter (`models.v15.export`): `--format peft` writes the diffusers
        layout (`AceStepPipeline.load_lora_weights` loads it), `--format comfyui`/`kohya` the ComfyUI 1.5
        layout (`--write_alpha`: .alpha tensors instead of baking), `--merge` a merged `transformer/` folder."""
        from acetune.models.v15.export import export

        return export(args, path, default_output)

    def generate_song(self, args, lyrics: str, seed: int, out: Path) -> int:
        """`acetune generate` on a 1.5 checkpoint: `AceStepPipeline` with every `--lora` applied."""
        from acetune.audio.io import audio_write
        from acetune.lora.check import check_render

        dtype = {"auto": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
            "cpu" if args.device == "auto" else args.device)
        if args.dtype == "auto" and device != "cpu":
            dtype = torch.bfloat16
        pipe = generation.load_pipeline(args.checkpoint_dir, dtype=dtype, device=device)
        for path, strength in args.loras:
            generation.apply_lora(pipe, path, strength)
        wav = generation.generate(pipe, args.prompt, lyrics=lyrics, duration=args.duration, steps=args.steps,
                                seed=seed, guidance_scale=args.guidance_scale)
        check_render(wav, out)
        audio_write(out, wav, pipe.sample_rate)
        print(out)
        print(f"{wav.shape[-1] / pipe.sample_rate:.2f} s, {pipe.sample_rate // 1000} kHz stereo, seed {seed}, "
              f"{args.steps} steps (ACE-Step 1.5)")
        return 0

    def detect(self, checkpoint_dir: Path) -> bool:
        try:
            index = json.loads((Path(checkpoint_dir) / MODEL_INDEX_FILE).read_text(encoding="utf-8"))
            return index.get("_class_name") == PIPELINE_CLASS
        except (OSError, ValueError, AttributeError):
            return False

    def check_checkpoint(self, checkpoint_dir: Path, components: tuple[str, ...] | None = None) -> None:
        """`components`: the folders whose weights must be there (None: all, see `hub.stage_components`)."""
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
            if (components is None or sub in components) and not any((checkpoint_dir / sub).glob("*.safetensors")):
                raise CheckpointError("no .safetensors weights", path=checkpoint_dir / sub, fix=_FIX)

    def load_transformer(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", drop_unused: bool = False) -> torch.nn.Module:
        """`AceStepTransformer1DModel` in eval mode (`drop_unused` has nothing to drop in 1.5)."""
        from diffusers import AceStepTransformer1DModel

        self.check_checkpoint(checkpoint_dir)
        model = AceStepTransformer1DModel.from_pretrained(str(Path(checkpoint_dir) / TRANSFORMER_DIR), dtype=dtype)
        # The two condition-encoder tensors training reads (context latents, CFG null input) travel with the
        # DiT as non-persistent buffers: they follow .to() and never enter a state dict or LoRA file.
        tensors = self.condition_tensors(checkpoint_dir)
        model.register_buffer(SILENCE_BUFFER, tensors["silence_latent"].to(dtype), persistent=False)
        model.register_buffer(NULL_BUFFER, tensors["null_condition_emb"].to(dtype), persistent=False)
        self.set_recipe(model, self.training_recipe(checkpoint_dir))
        return model.to(device).eval()

    def training_recipe(self, checkpoint_dir: Path, timestep_sampling: str = "auto",
                        cfg_dropout: float | None = None) -> objective.Recipe:
        """The checkpoint variant's recipe (`objective.default_recipe`: turbo discrete, base / sft training_v2),
        with `--timestep_sampling` (unless "auto") and `--cfg_dropout` (unless None) overriding it."""
        recipe = objective.default_recipe(variant.variant_of(checkpoint_dir))
        if timestep_sampling != "auto":
            if timestep_sampling not in objective.TIMESTEP_SAMPLINGS:
                raise TrainingError(f"unknown --timestep_sampling {timestep_sampling!r}",
                                    fix=f"choose auto, {', '.join(objective.TIMESTEP_SAMPLINGS)}")
            recipe = dataclasses.replace(recipe, timestep_sampling=timestep_sampling)
        if cfg_dropout is not None:
            recipe = dataclasses.replace(recipe, cfg_dropout=float(cfg_dropout))
        return recipe

    @staticmethod
    def set_recipe(model: torch.nn.Module, recipe: objective.Recipe) -> None:
        setattr(model, RECIPE_ATTR, recipe)

    def checkpoint_identity(self, checkpoint_dir: Path) -> dict:
        """Name, variant, XL, widths, config hash and condition-weights hash (`variant.identity`)."""
        return variant.identity(checkpoint_dir, self.config_hash(checkpoint_dir), self.condition_tensors(checkpoint_dir))

    def checkpoint_mismatch(self, recorded: dict, checkpoint_dir: Path) -> str | None:
        """None when a dataset's recorded identity fits this checkpoint, else "<recorded>, this checkpoint is <here>"."""
        here = self.checkpoint_identity(checkpoint_dir)
        if variant.same_checkpoint(recorded, here):
            return None
        return f"{variant.describe(recorded)}, this checkpoint is {variant.describe(here)}"

    def prepare_for_training(self, model: torch.nn.Module, *, use_ssl: bool = False,
                             drop_lyric_path: bool = False) -> dict[str, int]:
        """Nothing to free: the 1.5 DiT holds no SSL heads and no lyric encoder (preprocess ran those)."""
        return {}

    def training_loss(self, model: torch.nn.Module, batch: dict, *, shift: float = 3.0, ssl_coeff: float = 0.0,
                      noise: torch.Tensor | None = None, u: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> objective.V15Loss:
        """The official 1.5 objective (`objective.flow_matching_loss`) on a batch with the v1 key names.

        `model` comes from `load_transformer` (it carries the silence latent, the null condition and the
        recipe, `set_recipe`). `noise` (B, C, T) and `u` (a normal draw, `objective.timestep_from_normal`)
        pin the random draws; a pinned t also turns condition dropout off. `shift` and `ssl_coeff` belong
        to v1 (the recipe fixes the 1.5 timesteps).
        """
        if not hasattr(model, SILENCE_BUFFER):
            raise TrainingError("the 1.5 transformer was not loaded through the family",
                                fix="load it with get_family('acestep15').load_transformer(checkpoint_dir)")
        t = None if u is None else objective.timestep_from_normal(u.reshape(-1).expand(batch["target_latents"].shape[0]))
        return objective.flow_matching_loss(model, batch, getattr(model, SILENCE_BUFFER),
                                            null_condition=getattr(model, NULL_BUFFER),
                                            recipe=getattr(model, RECIPE_ATTR, None), generator=generator,
                                            noise=noise, t=t)

    def condition_tensors(self, checkpoint_dir: Path) -> dict[str, torch.Tensor]:
        """`silence_latent` (1, N, C) and `null_condition_emb` (1, 1, D) of `AceStepConditionEncoder`,
        read alone from its safetensors (the encoder itself is not built)."""
        from safetensors import safe_open

        wanted, found = ("silence_latent", "null_condition_emb"), {}
        for path in sorted((Path(checkpoint_dir) / CONDITION_ENCODER_DIR).glob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                found.update({k: f.get_tensor(k).float() for k in wanted if k in f.keys()})
        missing = [k for k in wanted if k not in found]
        if missing:
            raise CheckpointError(f"the condition encoder weights lack {', '.join(missing)}",
                                  path=Path(checkpoint_dir) / CONDITION_ENCODER_DIR, fix=_FIX)
        return found

    def encoder_config_hash(self, checkpoint_dir: Path) -> str:
        """Hash of the configs of the encoders preprocess runs (VAE, Qwen3, condition encoder)."""
        configs = {sub: _read_json(Path(checkpoint_dir) / sub / CONFIG_FILE)
                   for sub in (VAE_DIR, TEXT_ENCODER_DIR, CONDITION_ENCODER_DIR)}
        clean = {sub: {k: v for k, v in c.items() if not k.startswith("_") and k != "transformers_version"}
                 for sub, c in configs.items()}
        return hashlib.sha256(json.dumps(clean, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def config_hash(self, checkpoint_dir: Path) -> str:
        """sha256 (16 hex digits) of the transformer and condition-encoder configs (`_`-keys dropped)."""
        configs = {}
        for sub in (TRANSFORMER_DIR, CONDITION_ENCODER_DIR):
            data = _read_json(Path(checkpoint_dir) / sub / CONFIG_FILE)
            configs[sub] = {k: v for k, v in data.items() if not k.startswith("_")}
        return hashlib.sha256(json.dumps(configs, sort_keys=True).encode("utf-8")).hexdigest()[:16]


FAMILY = V15Family()
