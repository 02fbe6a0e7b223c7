"""Captioning: ask an audio-language model for tags and lyrics (`backends`), what to ask (`prompts`),
and how its answers become sidecar text (`tags`)."""
