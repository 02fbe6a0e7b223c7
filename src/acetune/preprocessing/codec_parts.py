"""Preprocess only encodes: drop the v1 codec's decode-only parts once it is loaded.

The DCAE decoder and the vocoder's generator (backbone + head) are never run by preprocess, yet they
are ~180M of the official codec's ~260M parameters: held in RAM for the whole run and moved to the
device with the codec for every part. The encode path (vocoder.mel_transform -> dcae.encoder) is
left as it is, so the latents are bit-identical.
"""

from __future__ import annotations

import torch

DECODE_ONLY = {"dcae": ("decoder",), "vocoder": ("backbone", "head")}


def encoder_only(codec: torch.nn.Module) -> torch.nn.Module:
    """Remove `DECODE_ONLY` submodules from a v1 `MusicDCAE` in place and return it.

    A codec without these attributes (another family's) is returned unchanged.
    """
    for owner_name, names in DECODE_ONLY.items():
        owner = getattr(codec, owner_name, None)
        for name in names:
            if isinstance(getattr(owner, name, None), torch.nn.Module):
                setattr(owner, name, None)
    return codec
