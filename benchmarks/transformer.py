"""Benchmark the v1 transformer on CPU: parameters, forward+backward time, peak RSS.

Configs: the golden tiny, a medium (6 layers, 8 x 128 = 1024 wide, official lyric encoder) and the
official 3.5B (measured only with --official: needs ~14 GB in fp32). Each measured case runs in its
own process (peak RSS is per process and includes ~0.65 GB of imports), like
../shared/facts/reference-baseline.md: batch 1, text 20 tokens, lyrics 200 tokens, SSL targets
1024-d at 75 Hz and 768-d at 50 Hz, rsLoRA r 64 on to_q/to_k/to_v/to_out.0, AdamW-free (the step is
forward + backward only). The official config's training peak is estimated by `benchmarks/train.py
--analytic` (`acetune.training.memory`, the one model of it).

    OMP_NUM_THREADS=2 python benchmarks/transformer.py            # tiny + medium
    OMP_NUM_THREADS=2 python benchmarks/transformer.py --official  # + the 3.5B (14 GB RAM)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

FRAMES = {"10s": 108, "60s": 646}
SSL_HZ = (75, 50)


def configs() -> dict[str, dict]:
    from acetune.models.v1.transformer import tiny_transformer_config

    medium = dict(num_layers=6, num_attention_heads=8, attention_head_dim=128, ssl_encoder_depths=[3, 3])
    return {"tiny": tiny_transformer_config(), "medium": medium, "official": {}}


def measure(name: str, length: str, ckpt: bool, dtype_name: str, repeats: int) -> dict:
    import torch
    from peft import LoraConfig

    from acetune.models.v1.transformer import build_transformer
    from acetune.parity.det_init import det_init_

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = build_transformer(configs()[name])
    params = sum(p.numel() for p in model.parameters())  # as the official state dict counts them
    model.drop_unused_projections()
    model.to(dtype)  # on the meta device: det_init_ then materialises each weight straight in `dtype`
    det_init_(model)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=64, lora_alpha=1, use_rslora=True,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights in fp32 over the base dtype
    model.train()
    if ckpt:
        model.enable_gradient_checkpointing()
    cfg = model.config
    frames = FRAMES[length]
    seconds = int(length[:-1])
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(1, 8, 16, frames, generator=g), attention_mask=torch.ones(1, frames),
        encoder_text_hidden_states=torch.randn(1, 20, cfg.text_embedding_dim, generator=g),
        text_attention_mask=torch.ones(1, 20), speaker_embeds=torch.zeros(1, cfg.speaker_embedding_dim),
        lyric_token_idx=torch.randint(0, 6000, (1, 200), generator=g), lyric_mask=torch.ones(1, 200),
        timestep=torch.tensor([500.0]),
        ssl_hidden_states=[[torch.randn(seconds * hz, dim, generator=g)] for hz, dim in zip(SSL_HZ, cfg.ssl_latent_dims)],
    )
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(**kw)
            loss = out.sample.float().square().mean() + sum(v for _, v in out.proj_losses)
        loss.backward()
        if i:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"params": params, "time_s": statistics.median(times), "peak_rss_gb": peak_gb}


def run_case(name: str, length: str, ckpt: str, dtype: str, repeats: int) -> dict:
    """One measurement in its own process (peak RSS is per process); raises RuntimeError if it failed."""
    cmd = [sys.executable, __file__, "--case", name, length, ckpt, "--dtype", dtype, "--repeats", str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: tiny, 10 s, checkpointing on only."""
    cases = [("tiny", "10s", "1")] if quick else [(n, length, c) for n in ("tiny", "medium") for length in FRAMES
                                                  for c in ("0", "1")]
    out = []
    for name, length, ckpt in cases:
        r = run_case(name, length, ckpt, "fp32", 2 if quick else 3)
        config = f"{name} ({r['params'] / 1e6:.1f} M), {length}, ckpt {'on' if ckpt == '1' else 'off'}, fp32 LoRA r64"
        out += [("transformer fwd+bwd", config, r["time_s"], "s"), ("transformer peak RSS", config, r["peak_rss_gb"], "GB")]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", action="store_true", help="also measure the official config (~14 GB RAM)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", nargs=3, metavar=("CONFIG", "LENGTH", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        name, length, ckpt = args.case
        print(json.dumps(measure(name, length, ckpt == "1", args.dtype, args.repeats)))
        return 0
    names = ["tiny", "medium"] + (["official"] if args.official else [])
    print(f"{'config':<9} {'params':>14} {'audio':>5} {'ckpt':>5} {'fwd+bwd s':>10} {'peak RSS GB':>12}  ({args.dtype}, LoRA r64)")
    for name in names:
        for length in FRAMES:
            for ckpt in ("0", "1"):
                try:
                    r = run_case(name, length, ckpt, args.dtype, args.repeats)
                except RuntimeError as err:
                    print(f"{name:<9} {length} ckpt={ckpt}: failed: {err}")
                    continue
                print(f"{name:<9} {r['params']:>14,} {length:>5} {'on' if ckpt == '1' else 'off':>5} "
                      f"{r['time_s']:>10.3f} {r['peak_rss_gb']:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
