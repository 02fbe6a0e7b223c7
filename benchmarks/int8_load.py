"""The `--int8` load's peak memory: loading in bf16 then quantizing vs quantizing each block as it is read.

A v1 transformer (medium by default: 6 x 1024; `--config official` needs ~8 GB of RAM and the bigmem lock)
with det_init weights is saved once in the official folder layout (`ace_step_transformer/`, one
safetensors file); each way of loading then runs in its own fresh process, which reports its peak RSS
and the growth of the peak over the RSS before loading (imports excluded; Linux: the peak is reset
before the load through /proc/self/clear_refs), with glibc's mmap threshold
fixed at 64 KB so that RSS follows what is allocated (`--glibc_default`: without). Both ways give the same
int8 weights (tests/training/test_int8_load.py).

    python benchmarks/int8_load.py                    # medium
    flock /tmp/acetune-bigmem.lock python benchmarks/int8_load.py --config official
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train as bench_train  # noqa: E402  (benchmarks/train.py: configs, RSS)

WAYS = ("bf16 load, then quantize", "quantize each block as it is read")


def save(config: str, folder: Path) -> None:
    import torch

    from acetune.layout import V1_TRANSFORMER_DIR
    from acetune.models.v1.transformer import build_transformer
    from acetune.parity.det_init import det_init_

    model = build_transformer(bench_train.configs()[config])
    model.to(torch.bfloat16)
    det_init_(model)
    model.save_pretrained(folder / V1_TRANSFORMER_DIR)


def load(folder: str, way: int) -> dict:
    import torch

    from acetune.models.v1.family import FAMILY
    from acetune.training.quantize import quantize_block_int8, quantize_int8

    before = bench_train._rss_gb()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to now: the imports peak higher
        f.write("5")
    if way == 0:
        model = FAMILY.load_transformer(Path(folder), dtype=torch.bfloat16, drop_unused=True)
        quantize_int8(model)
    else:
        model = FAMILY.load_transformer(Path(folder), dtype=torch.bfloat16, drop_unused=True,
                                       on_block=quantize_block_int8)
    after = bench_train._rss_gb()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024 / 1e9
    return {"peak_gb": peak, "growth_gb": peak - before, "resident_gb": after - before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="medium", choices=("tiny", "medium", "official"))
    ap.add_argument("--glibc_default", action="store_true", help="glibc's own mmap threshold (it rises up to 32 MB "
                    "as blocks are freed, and the heap then keeps freed weights: RSS overstates what is allocated)")
    ap.add_argument("--way", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way is not None:
        print(json.dumps(load(args.folder, args.way)))
        return 0
    env = dict(os.environ)
    if not args.glibc_default:  # as `benchmarks/train.py --check_analytic`: RSS follows the allocations
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with tempfile.TemporaryDirectory() as tmp:
        save(args.config, Path(tmp))
        print(f"{args.config} config, int8 load: {'way':<36} {'peak RSS GB':>11} {'peak growth GB':>14} "
              f"{'resident after GB':>17}")
        for way, label in enumerate(WAYS):
            res = subprocess.run([sys.executable, __file__, "--way", str(way), "--folder", tmp],
                                 capture_output=True, text=True, env=env)
            if res.returncode:
                print(f"{label}: failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{'':<30}{label:<36} {r['peak_gb']:>11.2f} {r['growth_gb']:>14.2f} "
                  f"{r['resident_gb']:>17.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
