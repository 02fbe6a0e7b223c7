"""The ACE-Step v1 (3.5B) model family (see `acetune.models.family.ModelFamily`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from acetune.layout import (
    CONFIG_FILE,
    V1_DCAE_DIR,
    V1_TEXT_ENCODER_DIR,
    V1_TRANSFORMER_DIR,
    V1_VOCODER_DIR,
)
from acetune.models.v1.loading import check_checkpoint, read_config
from acetune.models.v1.transformer import ACEStepTransformer2DModel, default_config

# The fork's `trainer_new.py` default (config/lora_config_transformer_only.json): both attentions of
# every transformer block. Adding the Conformer's attention gives the fork's lora_config.json.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS_WITH_LYRICS = LORA_TARGETS + ("linear_q", "linear_k", "linear_v")



class V1Family:
    """ACE-Step v1: `ace_step_transformer/`, `music_dcae_f8c8/`, `music_vocoder/`, `umt5-base/`."""

    name = "ace-step-v1"
    loads_by_block = True  # `load_transformer(..., on_block=f)` calls f on each block as soon as it is read
    default_lora_targets = LORA_TARGETS

    def detect(self, checkpoint_dir: Path) -> bool:
        config = Path(checkpoint_dir) / V1_TRANSFORMER_DIR / CONFIG_FILE
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("_class_name") in (
                "Transformer2DModel", "ACEStepTransformer2DModel")
        except (OSError, ValueError, AttributeError):
            return False

    def check_checkpoint(self, checkpoint_dir: Path, components: tuple[str, ...] | None = None) -> None:
        check_checkpoint(ACEStepTransformer2DModel, checkpoint_dir, components)

    def load_transformer(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", drop_unused: bool = False,
                         on_block=None) -> torch.nn.Module:
        """on_block(block): called on each transformer block as soon as all its weights are read (`--int8`
        quantizes there, so the load never holds the whole model in `dtype`)."""
        from acetune.models.v1.loading import load_transformer

        if on_block is None:
            return ACEStepTransformer2DModel.from_pretrained(Path(checkpoint_dir) / V1_TRANSFORMER_DIR,
                                                             torch_dtype=dtype, device=device, drop_unused=drop_unused)
        return load_transformer(ACEStepTransformer2DModel, Path(checkpoint_dir) / V1_TRANSFORMER_DIR, dtype=dtype,
                                device=device, drop_unused=drop_unused, on_block=on_block)

    def speaker_dim(self, checkpoint_dir: Path) -> int:
        """Width of the speaker embedding the transformer takes (`speaker_embedding_dim`)."""
        return int({**default_config(), **read_config(ACEStepTransformer2DModel, Path(checkpoint_dir) / V1_TRANSFORMER_DIR)}["speaker_embedding_dim"])

    def config_hash(self, checkpoint_dir: Path) -> str:
        """sha256 (16 hex digits) of the resolved transformer config (defaults filled, `inner_dim` dropped)."""
        resolved = {**default_config(), **read_config(ACEStepTransformer2DModel, Path(checkpoint_dir) / V1_TRANSFORMER_DIR)}
        resolved.pop("inner_dim", None)
        canonical = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
                               sort_keys=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    # ---- training hooks (see ModelFamily) ----

    def prepare_for_training(self, model: torch.nn.Module, *, use_ssl: bool, drop_lyric_path: bool = False
                             ) -> dict[str, int]:
        """Delete the unused `cross_attn.add_*` projections, the SSL projectors without SSL targets, and
        the lyric path (`lyric_embs`, `lyric_encoder`, `lyric_proj`) when its output is cached."""
        def count(modules) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        # add_q/k/v_proj and to_add_out: 4 x (W^2 + W) per block, whether dropped here or never loaded
        width = model.inner_dim
        freed = {"cross_attn.add_*": 4 * (width * width + width) * len(model.transformer_blocks)}
        model.drop_unused_projections()
        if not use_ssl and len(model.projectors):
            freed["projectors"] = count([model.projectors])
            model.projectors = torch.nn.ModuleList()
        if drop_lyric_path and model.lyric_encoder is not None:
            freed["lyric path"] = count([model.lyric_embs, model.lyric_encoder, model.lyric_proj])
            model.lyric_embs = model.lyric_encoder = model.lyric_proj = None
        return freed

    def training_loss(self, model: torch.nn.Module, batch: dict, *, shift: float = 3.0, ssl_coeff: float = 1.0,
                      noise: torch.Tensor | None = None, u: torch.Tensor | None = None):
        """The fork's `run_step`: noise, logit-normal timestep, noisy input, forward, preconditioned masked MSE
        plus `ssl_coeff` x the mean SSL projection loss (`models.v1.flow`). Returns a `FlowLoss`."""
        from acetune.models.v1.flow import (
            add_noise,
            flow_matching_loss,
            sample_training_timesteps,
            timestep_indices_from_u,
            training_schedule,
        )

        x0 = batch["target_latents"]
        noise = torch.randn_like(x0) if noise is None else noise.to(x0)  # the fork draws the noise before u
        if u is None:
            drawn = sample_training_timesteps(x0.shape[0], shift=shift)
            sigmas, timesteps = drawn.sigmas, drawn.timesteps
        else:
            indices = timestep_indices_from_u(u)
            schedule_sigmas, schedule_timesteps = training_schedule(shift)
            sigmas, timesteps = schedule_sigmas[indices], schedule_timesteps[indices]
        noisy = add_noise(x0, noise, sigmas)
        mask = batch["attention_mask"]
        states, states_mask = model.encode(
            batch["encoder_text_hidden_states"], batch["text_attention_mask"], batch["speaker_embeds"],
            batch["lyric_token_idx"], batch["lyric_mask"], lyric_hidden_states=batch.get("lyric_hidden_states"))
        out = model.decode(noisy, mask, states, states_mask, timesteps.to(x0.device, x0.dtype),
                           batch.get("ssl_hidden_states") or None, output_length=x0.shape[-1])
        return flow_matching_loss(out.sample, noisy, x0, sigmas, mask, out.proj_losses, ssl_coeff)

    def validation_renderer(self, transformer: torch.nn.Module, checkpoint_dir: Path, **options):
        """A `V1Generator` around the in-training transformer; UMT5 and the codec are loaded per render."""
        from acetune.models.v1.pipeline import (
            V1Generator,  # family -> pipeline only (the pipeline never imports us)
        )

        return V1Generator(transformer, checkpoint_dir=checkpoint_dir, **{"free_encoders": True, **options})

    # ---- preprocess hooks ----

    sample_rate = 48000  # MusicDCAE.encode's input rate

    def load_codec(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
        from acetune.models.v1.dcae import MusicDCAE

        return MusicDCAE.from_pretrained(checkpoint_dir, dtype=dtype, device=device)

    def load_text_encoder(self, checkpoint_dir: Path, dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu"):
        from acetune.models.v1.text_encoder import TextEncoder

        return TextEncoder.from_pretrained(Path(checkpoint_dir) / V1_TEXT_ENCODER_DIR, dtype=dtype, device=device)

    def load_lyric_tokenizer(self, checkpoint_dir: Path, vocab: Path | None = None):
        from acetune.models.v1.lyrics import LyricTokenizer

        return LyricTokenizer.from_vocab(vocab, checkpoint_dir=checkpoint_dir)

    def encoder_config_hash(self, checkpoint_dir: Path) -> str:
        """sha256 (16 hex digits) of the DCAE, vocoder and UMT5 config.json files (library versions and
        `_`-prefixed keys left out, so re-saving a folder keeps the hash)."""
        configs = {}
        for sub in (V1_DCAE_DIR, V1_VOCODER_DIR, V1_TEXT_ENCODER_DIR):
            config = json.loads((Path(checkpoint_dir) / sub / CONFIG_FILE).read_text(encoding="utf-8"))
            configs[sub] = {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}
        canonical = json.dumps(configs, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


FAMILY = V1Family()
