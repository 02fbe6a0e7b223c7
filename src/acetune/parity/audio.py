"""Golden case `get_audio`: the torchaudio resampling kernels and `Text2MusicDataset.get_audio` rules.

Data: `codec/codec.safetensors` (`resample_kernel_*`, `waveform_48k` -> `resampled_44k`,
`get_audio.<case>.{input, output_head}`) and `codec/meta.json` (`get_audio_cases`: input rate,
expected output shape or None for a rejected clip). Tolerances: golden README (1e-5 rel L2;
shapes, rejections and zero padding exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from acetune.audio.io import get_audio_rules
from acetune.audio.resample import resample, resample_kernel
from acetune.parity.registry import Row, golden_case, row_exact, row_rel

CASE = "get_audio"
TOL = 1e-5


@golden_case(CASE, folder="codec")
def get_audio_case(golden: Path) -> list[Row]:
    folder = Path(golden) / "codec"
    tensors = load_file(str(folder / "codec.safetensors"))
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    rows: list[Row] = []
    for orig, new in ((48000, 44100), (44100, 48000)):
        kernel, _, _ = resample_kernel(orig, new)
        rows.append(row_rel(CASE, f"resample_kernel_{orig}_to_{new}", kernel,
                            tensors[f"resample_kernel_{orig}_to_{new}"], TOL))
    rows.append(row_rel(CASE, "resampled_44k", resample(tensors["waveform_48k"], 48000, 44100),
                        tensors["resampled_44k"], TOL))
    for name, spec in sorted(meta["get_audio_cases"].items()):
        wav = tensors[f"get_audio.{name}.input"]
        out = get_audio_rules(wav, int(spec["input_sr"]))
        expected_shape = spec.get("output_shape")
        if expected_shape is None:  # the reference rejects this clip as silent
            rows.append(row_exact(CASE, f"{name}.rejected", torch.tensor(out is None), torch.tensor(True)))
            continue
        if out is None:
            rows.append(Row(CASE, f"{name}.shape", "exact", float("inf"), 0.0))
            continue
        rows.append(row_exact(CASE, f"{name}.shape", torch.tensor(out.shape), torch.tensor(expected_shape)))
        head = int(spec["output_head_samples"])
        rows.append(row_rel(CASE, f"{name}.output_head", out[:, :head], tensors[f"get_audio.{name}.output_head"], TOL))
        rows.append(row_exact(CASE, f"{name}.zero_tail", out[:, head:], torch.zeros_like(out[:, head:])))
    return rows
