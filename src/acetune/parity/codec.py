"""Golden case `v1_codec`: mel, DCAE and vocoder against ../shared/golden/codec (README "Codec facts").

Builds the tiny DCAE and vocoder from the golden configs and weights, saves them in the official
layout and loads them back through `MusicDCAE.from_pretrained` (the real code path), then compares
every stored stage at the README tolerances (rel L2 1e-5; lengths and the window exact).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC
from safetensors.torch import load_file

from acetune.models.v1.dcae import MusicDCAE, latent_lengths_for
from acetune.models.v1.mel import LogMelSpectrogram
from acetune.models.v1.vocoder import ADaMoSHiFiGANV1
from acetune.parity.registry import Row, golden_case, row_exact, row_rel

CASE = "v1_codec"
TOL = 1e-5


def _config(meta: dict, key: str) -> dict:
    return {k: v for k, v in meta[key].items() if not k.startswith("_")}


def build_golden_codec(golden: Path, folder: Path) -> MusicDCAE:
    """Write the golden tiny DCAE + vocoder to `folder` (official layout) and load them with from_pretrained."""
    codec = Path(golden) / "codec"
    meta = json.loads((codec / "meta.json").read_text())
    dcae = AutoencoderDC(**_config(meta, "dcae_tiny_config"))
    dcae.load_state_dict(load_file(codec / "dcae_tiny_weights.safetensors"), strict=True)
    vocoder = ADaMoSHiFiGANV1(**_config(meta, "vocoder_tiny_config"))
    vocoder.load_state_dict(load_file(codec / "vocoder_tiny_weights.safetensors"), strict=True)
    MusicDCAE(dcae, vocoder).save_pretrained(folder)
    return MusicDCAE.from_pretrained(folder)


def _centered(wav: torch.Tensor) -> torch.Tensor:
    return wav - wav.mean(dim=-1, keepdim=True)  # the tiny vocoder's output is mostly a DC offset


@golden_case(CASE, folder="codec")
def codec_case(golden: Path) -> list[Row]:
    codec = Path(golden) / "codec"
    ref = load_file(codec / "codec.safetensors")
    meta = json.loads((codec / "meta.json").read_text())
    rows: list[Row] = []

    def rel(name, out, tensor_ref=None):
        rows.append(row_rel(CASE, name, out, ref[name] if tensor_ref is None else tensor_ref, TOL))

    with torch.no_grad():
        # Mel front end, our own window and filterbank (not the ones stored in the vocoder weights).
        mel_fn = LogMelSpectrogram()
        rel("stft_window", mel_fn.spectrogram.window)
        rel("mel_filterbank", mel_fn.mel_scale.fb)
        audio44 = ref["resampled_44k"]  # (1, 2, 119070)
        padded = F.pad(audio44, (0, meta["mel_input_padded_length"] - audio44.shape[-1]))
        rel("log_mel", mel_fn(padded))

        # Resampler (torchaudio kernel rebuilt in acetune.audio.resample).
        from acetune.audio.resample import resample, resample_kernel

        rel("resample_kernel_48000_to_44100", resample_kernel(48000, 44100)[0])
        rel("resample_kernel_44100_to_48000", resample_kernel(44100, 48000)[0])
        rel("resampled_44k", resample(ref["waveform_48k"], 48000, 44100))

        with tempfile.TemporaryDirectory() as tmp:
            model = build_golden_codec(golden, Path(tmp))
        rel("dcae_encoder_input", model.dcae_input(audio44))
        rel("dcae_encoder_output", model.dcae.encoder(ref["dcae_encoder_input"]))
        latents, lengths = model.encode(ref["waveform_48k"], ref["audio_lengths"])
        rel("latents", latents)
        rows.append(row_exact(CASE, "latent_lengths", lengths, ref["latent_lengths"]))
        # Same latents from the stored 44.1 kHz audio (isolates the codec from the resampler).
        rel("latents_from_resampled_44k", model.encode(audio44, sr=44100)[0], ref["latents"])
        cases = meta["latent_length_cases"]
        got = [int(latent_lengths_for(torch.tensor([c["audio_length"]]), c["sr_argument"] or 48000)[0])
               for c in cases]
        rows.append(row_exact(CASE, f"latent_length_cases ({len(cases)})", torch.tensor(got),
                              torch.tensor([c["latent_length"] for c in cases])))

        rel("dcae_decoder_output", model.dcae.decoder(ref["latents"] / 0.1786 - 1.9091))
        mel = model.decode_mel(ref["latents"])  # (1, 2, 128, 240)
        rel("vocoder_input_mel", mel.transpose(0, 1))  # stored per channel: (2, 1, 128, 240)
        for key, sr in (("decoded_44k", None), ("decoded_48k", 48000)):
            out_sr, wavs = model.decode(ref["latents"], sr=sr)
            out = torch.stack(wavs)
            rel(key, out)
            rel(f"{key} minus channel mean", _centered(out), _centered(ref[key]))
            rows.append(row_exact(CASE, f"{key} sample rate", torch.tensor(out_sr),
                                  torch.tensor(meta["decode_sample_rates"][f"sr={sr}"])))
    return rows
