"""Preprocess drops the codec's decode-only parts: fewer parameters, the same latents bit for bit."""

from __future__ import annotations

import torch

from acetune.preprocessing.codec_parts import encoder_only


def _tiny_codec():
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import MusicDCAE, tiny_dcae_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

    torch.manual_seed(0)
    return MusicDCAE(AutoencoderDC(**tiny_dcae_config()), ADaMoSHiFiGANV1(**tiny_vocoder_config())).eval()


def test_encoder_only_keeps_latents_bit_identical_and_drops_decoder_and_generator():
    full = _tiny_codec()
    trimmed = encoder_only(_tiny_codec())
    n_full = sum(p.numel() for p in full.parameters())
    n_kept = sum(p.numel() for p in trimmed.parameters())
    dropped = sum(p.numel() for m in (full.dcae.decoder, full.vocoder.backbone, full.vocoder.head)
                  for p in m.parameters())
    assert trimmed.dcae.decoder is None and trimmed.vocoder.backbone is None and trimmed.vocoder.head is None
    assert n_kept == n_full - dropped and dropped > 0
    g = torch.Generator().manual_seed(1)
    audio = 0.3 * torch.randn(1, 2, 3 * 48000 + 123, generator=g)  # odd length: padding path too
    lat_full, len_full = full.encode(audio, torch.tensor([audio.shape[-1]]))
    lat_trim, len_trim = trimmed.encode(audio, torch.tensor([audio.shape[-1]]))
    assert torch.equal(lat_full, lat_trim) and torch.equal(len_full, len_trim)
    assert trimmed.to(torch.bfloat16).dtype == torch.bfloat16  # moving/casting the trimmed codec still works


def test_encoder_only_leaves_a_codec_without_those_parts_alone():
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert encoder_only(other) is other and len(list(other.parameters())) == 2
