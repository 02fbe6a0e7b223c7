"""The official ACE-Step v1 checkpoint layout, named once.

A checkpoint directory holds one sub-folder per component, each in diffusers' layout
(`config.json` + `diffusion_pytorch_model.safetensors`, or sharded with an index), except the
text encoder, which is a transformers folder.
"""

from __future__ import annotations

from diffusers.utils.constants import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME

V1_TRANSFORMER_DIR = "ace_step_transformer"
V1_MARKER = "genre_embedder.weight"  # a weight only ACE-Step v1's transformer has (ComfyUI detects v1 by it)
V1_DCAE_DIR = "music_dcae_f8c8"
V1_VOCODER_DIR = "music_vocoder"
V1_TEXT_ENCODER_DIR = "umt5-base"
V1_COMPONENT_DIRS = (V1_TRANSFORMER_DIR, V1_DCAE_DIR, V1_VOCODER_DIR, V1_TEXT_ENCODER_DIR)

# diffusers' own file names, re-exported so the rest of acetune imports them from here.
CONFIG_FILE = CONFIG_NAME  # "config.json"
WEIGHTS_FILE = SAFETENSORS_WEIGHTS_NAME  # "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_FILE = SAFE_WEIGHTS_INDEX_NAME  # "diffusion_pytorch_model.safetensors.index.json"

# The lyric BPE vocab is not shipped; it is looked up next to the checkpoint under this name.
LYRIC_VOCAB_FILE = "vocab.json"
