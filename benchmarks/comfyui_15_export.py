"""Peak memory of `acetune export --comfyui_checkpoint --comfyui_base` (ACE-Step 1.5 single file for ComfyUI).

Builds a fine-tuned transformer folder with the released 2B decoder's widths (2048 wide, MLP 6144, 16 heads,
8 kv heads, head_dim 128) and `--layers` layers, and a "ComfyUI file" holding the same decoder under
ComfyUI's names plus `--rest_gb` of other tensors (standing for the condition encoder and tokenizer), all
bf16. Then runs the export in a fresh process and reports its peak RSS next to the same command stopped
before copying (a missing base): the difference is what the copy itself holds (the claim in docs/export.md:
one 16 MB copy buffer, not the model). Values do not matter, so the tensors are zeros.

    python benchmarks/comfyui_15_export.py               # 8 layers (1.0 GB decoder) + 0.5 GB rest
    python benchmarks/comfyui_15_export.py --layers 24   # the 2B decoder's full depth (3.2 GB)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RELEASE_2B = dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2)
IMPORTS = "import acetune.stages.export, acetune.stages.extract_lora, acetune.models.v15.export_comfyui"


def build(root: Path, layers: int, rest_gb: float) -> tuple[Path, Path]:
    import torch
    from diffusers import AceStepTransformer1DModel
    from safetensors.torch import save_file

    from acetune.models.v15.export_comfyui import DETECT_KEY, comfyui_name

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AceStepTransformer1DModel(**RELEASE_2B, num_hidden_layers=layers)
                  .state_dict().items()}
    folder = root / "run" / "transformer"
    folder.mkdir(parents=True)
    save_file({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    rest = {DETECT_KEY: torch.zeros(2048, dtype=torch.bfloat16)}
    per = 2048 * 6144  # elements of one encoder-MLP-sized tensor
    for i in range(max(1, int(rest_gb * 1e9 / (2 * per)))):
        rest[f"encoder.lyric_encoder.layers.{i}.mlp.gate_proj.weight"] = torch.zeros(6144, 2048, dtype=torch.bfloat16)
    base = root / "acestep_v1.5_bench.safetensors"
    save_file({**{comfyui_name(k): torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()}, **rest},
              str(base))
    return folder, base


def peak_rss_mb(code: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `python -c code` in a fresh process: its own VmHWM (Linux), which exec
    resets (getrusage would also count the parent's memory the child had before exec)."""
    report = "\nprint('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True,
                          env=dict(os.environ, ACETUNE_NO_PROGRESS="1"))
    seconds = time.perf_counter() - start
    kib = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("VmHWM"))
    return kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rest_gb", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comfy15-bench-") as tmp:
        root = Path(tmp)
        folder, base = build(root, args.layers, args.rest_gb)
        out = root / "out.safetensors"
        def export(given_base: Path, code: int) -> str:
            return (f"{IMPORTS}\nfrom acetune.cli import run_command\n"
                    f"assert run_command('export', ['--comfyui_checkpoint', '--input_name', {str(folder)!r}, "
                    f"'--comfyui_base', {str(given_base)!r}, '--output_name', {str(out)!r}]) == {code}")
        # the same command stopped by a missing base: every import and flag parse, no tensor copied
        baseline, _ = peak_rss_mb(export(root / "missing.safetensors", 1))
        peak, seconds = peak_rss_mb(export(base, 0))
        gb = lambda p: p.stat().st_size / 1e9  # noqa: E731
        print(f"| decoder layers | base file | fine-tuned folder | output | export peak RSS | same command, nothing copied "
              f"| held by the export | time |\n|---|---|---|---|---|---|---|---|\n"
              f"| {args.layers} | {gb(base):.2f} GB | {gb(folder / 'diffusion_pytorch_model.safetensors'):.2f} GB "
              f"| {gb(out):.2f} GB | {peak:.0f} MB | {baseline:.0f} MB | {peak - baseline:.0f} MB | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
