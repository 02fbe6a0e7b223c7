"""A tiny ACE-Step 1.5 checkpoint in the official diffusers layout, with generated weights (tests, demo).

`save_tiny_checkpoint_v15(folder)` builds every component from the diffusers / transformers classes
with small configs and writes them with `AceStepPipeline.save_pretrained`, so loading the folder
exercises the same code path (`model_index.json`, `from_pretrained` per component) as the release:

    <folder>/model_index.json         `_class_name` "AceStepPipeline"
    <folder>/transformer/             AceStepTransformer1DModel, width 32, 2 layers
    <folder>/condition_encoder/       AceStepConditionEncoder, 1 lyric + 1 timbre layer
    <folder>/vae/                     AutoencoderOobleck, 48 kHz stereo -> 25 Hz x 8 latents
    <folder>/text_encoder/            Qwen3Model, width 32, 1 layer
    <folder>/tokenizer/               byte-level BPE (one token per byte) + "<|endoftext|>"
    <folder>/scheduler/               FlowMatchEulerDiscreteScheduler(num_train_timesteps=1)

Nothing is downloaded: the tokenizer is built locally from the 256 byte symbols.

`xl=True` gives the XL shape: a DiT wider (`TINY_XL_HIDDEN` 40) than the condition encoder's output
(32), bridged by `encoder_hidden_size`, as the release's 2560-wide DiT on a 2048-wide encoder;
`variant` ("turbo", "base", "sft") sets the DiT's `model_version` / `is_turbo`.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Latent width of the tiny model (the release uses 64): VAE latent channels = DiT acoustic dim.
TINY_ACOUSTIC_DIM = 8
TINY_TEXT_DIM = 32
TINY_HIDDEN = 32
TINY_XL_HIDDEN = 40  # XL: DiT width / condition width = 2560 / 2048 = 1.25
ENDOFTEXT = "<|endoftext|>"  # Qwen3's end/pad token; the 1.5 prompt templates spell it literally


def tiny_transformer_config(xl: bool = False, variant: str = "turbo") -> dict:
    """`AceStepTransformer1DModel` kwargs: in_channels = src latents + chunk mask + noisy latents."""
    config = dict(hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, in_channels=3 * TINY_ACOUSTIC_DIM,
                  audio_acoustic_hidden_dim=TINY_ACOUSTIC_DIM, patch_size=2, sliding_window=8,
                  is_turbo=variant == "turbo", model_version=variant)
    if xl:
        config.update(hidden_size=TINY_XL_HIDDEN, intermediate_size=80, encoder_hidden_size=TINY_HIDDEN)
    return config


def tiny_condition_encoder_config() -> dict:
    return dict(hidden_size=TINY_HIDDEN, intermediate_size=64, text_hidden_dim=TINY_TEXT_DIM,
                timbre_hidden_dim=TINY_ACOUSTIC_DIM, num_lyric_encoder_hidden_layers=1,
                num_timbre_encoder_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                sliding_window=8)


def tiny_vae_config() -> dict:
    """48 kHz stereo, hop 8 x 240 = 1920 samples per latent frame (25 Hz, as the release).

    `encoder_hidden_size` is twice the latent width: the posterior splits it into mean and scale.
    """
    return dict(encoder_hidden_size=2 * TINY_ACOUSTIC_DIM, downsampling_ratios=[8, 240], channel_multiples=[1, 1],
                decoder_channels=4, decoder_input_channels=TINY_ACOUSTIC_DIM, audio_channels=2,
                sampling_rate=48000)


def build_tiny_tokenizer():
    """A `PreTrainedTokenizerFast`: byte-level BPE without merges, so every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    fast.add_special_tokens({"additional_special_tokens": [ENDOFTEXT]})
    return fast


def build_tiny_text_encoder(vocab_size: int):
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(vocab_size=vocab_size, hidden_size=TINY_TEXT_DIM, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=4096)
    return Qwen3Model(config).eval()


def build_tiny_pipeline(seed: int = 0, xl: bool = False, variant: str = "turbo"):
    """An `AceStepPipeline` of tiny seeded components (the caller's global RNG is left untouched)."""
    from diffusers import (
        AceStepConditionEncoder,
        AceStepPipeline,
        AceStepTransformer1DModel,
        AutoencoderOobleck,
        FlowMatchEulerDiscreteScheduler,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = AceStepTransformer1DModel(**tiny_transformer_config(xl, variant))
        # Random init bounds the output: |proj_out(RMSNorm(h))| <= sqrt(width) * sigma_max(proj_out), below the
        # norm of a unit-variance velocity at width 32, so no adapter could fit it. A trained DiT has no such
        # limit; widen the output projection so the tiny model can be overfitted like the real one.
        transformer.proj_out_conv.weight.data.mul_(4.0)
        condition_encoder = AceStepConditionEncoder(**tiny_condition_encoder_config())
        # The converter stores the VAE-encoded silence here; small noise stands in for it.
        condition_encoder.silence_latent.normal_(0.0, 0.1)
        vae = AutoencoderOobleck(**tiny_vae_config())
        tokenizer = build_tiny_tokenizer()
        text_encoder = build_tiny_text_encoder(len(tokenizer))
    # The pipeline feeds its own sigma schedule in [0, 1] (see AceStepPipeline's docstring).
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    return AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition_encoder, scheduler=scheduler)


def save_tiny_checkpoint_v15(folder: str | Path, seed: int = 0, xl: bool = False, variant: str = "turbo") -> Path:
    """Write a tiny ACE-Step 1.5 pipeline folder (layout above) with seeded weights; returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(seed, xl, variant).save_pretrained(folder, safe_serialization=True)
    return folder
