"""Each training-step speed lever's share, measured A/B in one process (issue 21).

The step is `benchmarks/train.py`'s `step_runner` (the trainer's own: batch -> `V1Family.training_loss` under
bf16 autocast -> backward -> LoRA grads widened from bf16 -> clip -> AdamW -> LR scheduler step; rsLoRA r64 alpha 1 on
to_q/to_k/to_v/to_out.0, fp32 LoRA over bf16 weights, SSL losses on, lyric-encoder output cached).
For every lever the same model runs with the lever off and on, alternated (off on off on ...), each
measurement the median of `--steps` steps after warm-ups; the row gives the medians over `--rounds`
pairs and the on/off ratio of each pair (so the machine's load drifts out of the ratio).

Levers (lean casts are on by default in `acetune train`; checkpointing is on, not fine):
  checkpointing off  `--gradient_checkpointing off`: no recompute of each block in the backward
  fine checkpointing `--gradient_checkpointing fine`: each block's parts recomputed once more (less memory)
  lean casts         no fp32 round trip of q, k, v in the linear attention under autocast (bit-identical)
  compile            `--compile`: torch.compile of the transformer blocks (first steps compile)

    python benchmarks/train_levers.py                        # tiny and medium, 10 s and 60 s
    python benchmarks/train_levers.py --cases medium:60s --levers compile
    python benchmarks/train_levers.py --micro                # fused q/k/v GEMM and SDPA backends, kernels alone
    flock /tmp/acetune-bigmem.lock python benchmarks/train_levers.py --cases official:10s   # ~8 GB RAM
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train as bench_train  # noqa: E402  (benchmarks/train.py: configs, model build, sample)

LEVERS = ("checkpointing off", "fine checkpointing", "lean casts", "compile")
DEFAULT_CASES = ("tiny:10s", "tiny:60s", "medium:10s", "medium:60s")


def set_lever(model, lever: str, on: bool) -> None:
    """Switch one lever on or off on a built model (the others are left as they are)."""
    from acetune.models.v1.attention import LinearSelfAttention
    from acetune.training.block_checkpointing import apply_checkpointing
    from acetune.training.compiled import compile_blocks, uncompile_blocks

    if lever == "checkpointing off":
        model.disable_gradient_checkpointing() if on else model.enable_gradient_checkpointing()
    elif lever == "fine checkpointing":
        apply_checkpointing(model, len(model.transformer_blocks), inside=on)
    elif lever == "lean casts":
        LinearSelfAttention.lean_casts = on
    elif lever == "compile":
        compile_blocks(model) if on else uncompile_blocks(model)
    else:
        raise ValueError(f"unknown lever {lever!r}; one of {LEVERS}")


def step_runner(config: str, length: str):
    """(model, one_step) for a case: `benchmarks/train.py`'s step (the trainer's), bf16, lyrics cached."""
    model, one_step, _ = bench_train.step_runner(config, "bf16", length)
    return model, one_step


def measure_lever(model, one_step, lever: str, rounds: int, steps: int, warmup: int) -> dict:
    """Alternate lever off/on; returns medians (s) and the median of the per-pair on/off ratios."""
    def timed(on: bool) -> float:
        set_lever(model, lever, on)
        for _ in range(warmup):
            one_step()
        return statistics.median(one_step() for _ in range(steps))

    offs, ons = [], []
    for _ in range(rounds):
        offs.append(timed(False))
        ons.append(timed(True))
    set_lever(model, lever, lever == "lean casts")  # back to the trainer's default (only lean casts on)
    ratios = [b / a for a, b in zip(offs, ons)]
    return {"off": statistics.median(offs), "on": statistics.median(ons), "ratio": statistics.median(ratios),
            "ratios": ratios}


def _median_time(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _kernel_pairs(frames: int, width: int, g):
    """{label: (baseline, alternative)} callables for one size (each runs forward + backward)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.randn(1, frames, width, generator=g).bfloat16().requires_grad_()
    ws = [(torch.randn(width, width, generator=g) * 0.02).bfloat16() for _ in range(3)]
    fused = torch.cat(ws)
    heads, ctx = width // 128, 221
    q = torch.randn(1, heads, frames, 128, generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(1, heads, ctx, 128, generator=g).bfloat16().requires_grad_() for _ in range(2))
    mask = torch.ones(1, 1, frames, ctx, dtype=torch.bool)

    def three():
        sum(F.linear(x, w).float().sum() for w in ws).backward()

    def one():
        F.linear(x, fused).float().sum().backward()

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask).float().sum().backward()
        return run

    return {f"q/k/v GEMM x{frames}: 1 fused vs 3": (three, one),
            f"SDPA x{frames}: math vs flash": (sdpa(SDPBackend.FLASH_ATTENTION), sdpa(SDPBackend.MATH))}


def micro(rounds: int) -> None:
    """The two levers left alone, as kernels alone: three q/k/v GEMMs vs one fused GEMM (forward + backward),
    and the cross-attention's SDPA flash kernel vs its math backend (bf16, forward + backward)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for frames, width in ((646, 1024), (108, 2560)):  # medium 60 s, official 10 s
        for label, (base, alt) in _kernel_pairs(frames, width, g).items():
            pairs = [(_median_time(base), _median_time(alt)) for _ in range(rounds)]
            ratios = [b / a for a, b in pairs]
            print(f"{'kernel':<12} {label:<30} {statistics.median(p[0] for p in pairs) * 1e3:>7.1f}ms "
                  f"{statistics.median(p[1] for p in pairs) * 1e3:>7.1f}ms {statistics.median(ratios):>6.2f}   "
                  + " ".join(f"{r:.2f}" for r in ratios), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="CONFIG:LENGTH (tiny, medium, "
                    "official; 10s, 60s)")
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS, metavar="LEVER",
                    help=f"which levers ({', '.join(LEVERS)})")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs per lever")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after each switch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro", action="store_true", help="only the kernels of the levers left alone (fused q/k/v "
                    "GEMM, SDPA backend): baseline ms, alternative ms, alternative/baseline")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.micro:
        micro(args.rounds)
        return 0
    print(f"{'case':<12} {'lever':<18} {'off s':>8} {'on s':>8} {'on/off':>7}   per-pair ratios "
          f"({args.threads} threads, {args.rounds} pairs x median of {args.steps})")
    for case in args.cases:
        config, length = case.split(":")
        model, one_step = step_runner(config, length)
        for lever in args.levers:
            warmup = args.warmup + (2 if lever == "compile" else 0)  # compilation, then the dynamic-shape recompile
            r = measure_lever(model, one_step, lever, args.rounds, args.steps, warmup)
            print(f"{case:<12} {lever:<18} {r['off']:>8.3f} {r['on']:>8.3f} {r['ratio']:>7.2f}   "
                  + " ".join(f"{x:.2f}" for x in r["ratios"]), flush=True)
        del model, one_step
    return 0


if __name__ == "__main__":
    sys.exit(main())
