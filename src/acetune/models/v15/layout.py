"""The ACE-Step 1.5 checkpoint layout (diffusers pipeline folders), named once.

The diffusers release (e.g. `ACE-Step/acestep-v15-turbo-diffusers`) is one `AceStepPipeline`
folder: `model_index.json` plus one sub-folder per component, as `AceStepPipeline.save_pretrained`
writes it. `acetune.layout` holds the v1 names; these are the 1.5 ones.
"""

from __future__ import annotations

MODEL_INDEX_FILE = "model_index.json"
PIPELINE_CLASS = "AceStepPipeline"  # `_class_name` in model_index.json

TRANSFORMER_DIR = "transformer"  # AceStepTransformer1DModel (the DiT the LoRA adapts)
CONDITION_ENCODER_DIR = "condition_encoder"  # AceStepConditionEncoder (lyric + timbre + text packing)
VAE_DIR = "vae"  # AutoencoderOobleck, 48 kHz stereo <-> 25 Hz x 64 latents
TEXT_ENCODER_DIR = "text_encoder"  # Qwen3 (Qwen3-Embedding-0.6B in the release)
TOKENIZER_DIR = "tokenizer"
SCHEDULER_DIR = "scheduler"
# Optional (cover / audio-code conditioning only; text2music training never reads them).
AUDIO_TOKENIZER_DIR = "audio_tokenizer"
AUDIO_TOKEN_DETOKENIZER_DIR = "audio_token_detokenizer"

REQUIRED_DIRS = (TRANSFORMER_DIR, CONDITION_ENCODER_DIR, VAE_DIR, TEXT_ENCODER_DIR, TOKENIZER_DIR, SCHEDULER_DIR)
