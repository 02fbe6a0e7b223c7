"""Analytic peak memory of a FULL fine-tune (every transformer weight trained) at 360 s of audio.

Nothing is computed: the models are built on the meta device and autograd's saved tensors are counted
while the training forward runs with gradient checkpointing (one saved input per block), under bf16
autocast (`acetune.training.memory_trace.saved_bytes`). Peak = weight/optimizer bytes per trainable
parameter x parameters + the checkpointed forward's saved tensors + one block's recompute with 3x its
largest saved tensor for gradients in flight.

Optimizer schemes as `acetune train --full` runs them (bytes per trainable parameter on the device;
the optimizer-state bytes per parameter from `acetune.training.memory.optimizer_state_bytes`):
- adamw:               bf16-mixed: fp32 weights (the master itself) 4 + fp32 grads 4 + fp32 moments 8 = 16
- adamw8bit:           the same with 8-bit moments (bitsandbytes, + one fp32 absmax per 256): 4 + 4 + 2 = 10
- adamw8bit+offload:   `--optimizer_offload`: the moments in host RAM: 4 + 4 = 8 on the GPU
- adafactor bf16:      `--precision bf16`: bf16 weights 2 + bf16 grads 2 + factored second moment (~0) = 4
- adamw8bit bf16+offload: `--precision bf16 --optimizer adamw8bit --optimizer_offload`: 2 + 2 = 4
On N GPUs (FSDP full shard / ZeRO-3) the per-parameter bytes are divided by N, and each GPU also
holds two gathered blocks in bf16 (the one computing and the one prefetched).

    python benchmarks/full_finetune.py            # the table (about a minute, CPU only)
    python benchmarks/full_finetune.py --measure  # measured step time and peak RSS, tiny and medium (CPU)

ACE-Step 1.5 XL: the decoder width (2560), depth (32) and heads (32) are the release's; the MLP width is
assumed 3 x 2560 as in the 2B model (then the decoder has 3.67B parameters).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SECONDS = 360
GPU_GB = 24.0
SCHEMES = {"adamw": 16, "adamw8bit": 10, "adamw8bit+offload": 8, "adafactor bf16": 4,
           "adamw8bit bf16+offload": 4}
XL_15 = dict(hidden_size=2560, intermediate_size=3 * 2560, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, encoder_hidden_size=2048)


def _train_bench():
    spec = importlib.util.spec_from_file_location("acetune_bench_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _FusedAttention(torch.autograd.Function):
    """What a GPU attention kernel (flash / memory-efficient) keeps for the backward: q, k, v, the output and
    the row log-sum-exp. On the meta device SDPA takes the math path, which would save the T x T
    probabilities that no GPU run stores (1.3 GB per 2B block at 360 s)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: nothing runs on meta
        raise NotImplementedError


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    return _FusedAttention.apply(query, key, value)


def _saved(bench, fn, exclude):
    """`memory_trace.saved_bytes` with SDPA counted as a fused GPU kernel."""
    from acetune.training.memory_trace import saved_bytes

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        return saved_bytes(fn, exclude)
    finally:
        F.scaled_dot_product_attention = original


def _nbytes(obj) -> int:
    from acetune.training.memory_trace import nbytes

    return nbytes(obj)


def _meta(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, device="meta", dtype=dtype)


def activations_v1(bench) -> tuple[int, int, int, int]:
    """(params, saved bytes of the checkpointed forward, one block's transient, largest block's bf16 bytes)."""
    from acetune.models.v1.attention import cross_attention_mask, rope_tables
    from acetune.models.v1.family import FAMILY
    from acetune.models.v1.transformer import build_transformer

    model = build_transformer({})  # official config, meta
    model.drop_unused_projections()
    model.to(torch.bfloat16).requires_grad_(True).train()
    model.enable_gradient_checkpointing()
    cfg, w = model.config, model.inner_dim
    frames = int(SECONDS * 44100 / 512 / 8)
    ssl = [[_meta(SECONDS * hz, d)] for hz, d in zip(bench.SSL_HZ, cfg.ssl_latent_dims)]
    batch = {"target_latents": _meta(1, 8, 16, frames), "attention_mask": _meta(1, frames),
             "encoder_text_hidden_states": _meta(1, 20, 768), "text_attention_mask": _meta(1, 20),
             "speaker_embeds": _meta(1, cfg.speaker_embedding_dim),
             "lyric_token_idx": _meta(1, 200, dtype=torch.long), "lyric_mask": _meta(1, 200),
             "ssl_hidden_states": ssl}  # no cached lyric states: the lyric encoder trains too
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    n = sum(p.numel() for p in model.parameters())
    saved, _ = _saved(bench, lambda: FAMILY.training_loss(model, batch, noise=torch.zeros_like(
        batch["target_latents"]), u=torch.zeros(1)), params)
    x = _meta(1, frames, w).requires_grad_()
    ctx, temb = _meta(1, 221, w), _meta(1, 6 * w)
    rope = rope_tables(frames, cfg.attention_head_dim, cfg.rope_theta, torch.device("meta"))
    rope_c = rope_tables(221, cfg.attention_head_dim, cfg.rope_theta, torch.device("meta"))
    allowed = cross_attention_mask(torch.ones(1, frames, device="meta"), torch.ones(1, 221, device="meta"))
    block = model.transformer_blocks[0]
    one, largest = _saved(bench, lambda: block(x, None, ctx, allowed, temb, rope, rope_c), params)
    block_bytes = sum(p.numel() for p in block.parameters()) * 2
    return n, saved + _nbytes(batch), one + 3 * largest, block_bytes


def activations_15(bench, config: dict) -> tuple[int, int, int, int]:
    """The same four figures for a diffusers `AceStepTransformer1DModel` (25 Hz latents, 64 channels)."""
    from diffusers import AceStepTransformer1DModel

    def build(**extra):
        with torch.device("meta"):
            m = AceStepTransformer1DModel(**{**config, **extra})
        return m.to(torch.bfloat16).requires_grad_(True).train()

    frames, cond = SECONDS * 25, 1000  # condition: text + lyrics + timbre tokens
    width = config.get("encoder_hidden_size") or config.get("hidden_size", 2048)
    inputs = dict(hidden_states=_meta(1, frames, 64), timestep=_meta(1, dtype=torch.float32),
                  timestep_r=_meta(1, dtype=torch.float32), encoder_hidden_states=_meta(1, cond, width),
                  context_latents=_meta(1, frames, 128))

    def loss(model):
        out = model(**inputs, return_dict=False)[0]
        return F.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))

    model = build()
    model.enable_gradient_checkpointing()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved, _ = _saved(bench, lambda: loss(model), params)
    single = build(num_hidden_layers=1)  # one block plus the small in/out layers, not checkpointed
    one, largest = _saved(bench, lambda: loss(single), {p.untyped_storage()._cdata for p in single.parameters()})
    block_bytes = sum(p.numel() for p in model.layers[0].parameters()) * 2
    return sum(p.numel() for p in model.parameters()), saved + _nbytes(inputs), one + 3 * largest, block_bytes


def table() -> list[tuple[str, str, float, float, int]]:
    """[(model, scheme, GB on 1 GPU, GB per GPU on 8, parameters)]."""
    bench = _train_bench()
    models = {"v1 official": activations_v1(bench), "1.5 2B decoder": activations_15(bench, {}),
              "1.5 XL decoder": activations_15(bench, XL_15)}
    rows = []
    for name, (n, saved, transient, block) in models.items():
        act = (saved + transient) / 1e9
        for scheme, per_param in SCHEMES.items():
            one_gpu = n * per_param / 1e9 + act
            eight = n * per_param / 8 / 1e9 + act + 2 * block / 1e9
            rows.append((name, scheme, one_gpu, eight, n))
    return rows


def rows(quick: bool = False) -> list[tuple[str, str, float, str]]:
    """For benchmarks/run.py: one row per model and scheme (1 GPU and per GPU of 8)."""
    out = []
    for name, scheme, one, eight, _ in table():
        out.append(("full fine-tune peak", f"{name}, {scheme}, 360 s, 1 GPU", one, "GB"))
        out.append(("full fine-tune peak", f"{name}, {scheme}, 360 s, per GPU of 8 (FSDP)", eight, "GB"))
    return out


# (config, --precision, audio length, optimizer) measured for real on the CPU, one subprocess each
MEASURED = [("tiny", "32", "10s", "adamw"), ("tiny", "32", "60s", "adamw"), ("medium", "bf16-mixed", "10s", "adamw"),
            ("medium", "bf16", "10s", "adafactor"), ("medium", "bf16-mixed", "60s", "adamw")]


def measure_full(name: str, precision: str, length: str, optimizer_name: str, repeats: int = 3,
                 warmup: int = 1) -> dict:
    """Median seconds per full fine-tune step (every transformer weight trained, gradient checkpointing,
    lyric encoder run every step as `--full` does) and the process's peak RSS."""
    import resource
    import statistics
    import time

    from acetune.models.v1.family import FAMILY
    from acetune.models.v1.transformer import build_transformer
    from acetune.parity.det_init import det_init_
    from acetune.training.data import ConditionDropout, batch_to, make_batch
    from acetune.training.full import setup_full
    from acetune.training.optim import build_optimizer
    from acetune.training.setup import PRECISIONS

    bench = _train_bench()
    compute, master, autocast = PRECISIONS[precision]
    model = build_transformer(bench.configs()[name])
    model.drop_unused_projections()
    det_init_(model)
    model.to(compute).enable_gradient_checkpointing()
    setup = setup_full(model, [], master_dtype=master)
    FAMILY.prepare_for_training(model, use_ssl=True, drop_lyric_path=False)
    setup = setup.present_in(model)
    model.train()
    optimizer = build_optimizer(setup.params, optimizer_name, lr=1e-5)
    s = bench.sample(model.config, length)
    ssl_names = tuple(model.config.ssl_names)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        batch = batch_to(make_batch([s], dropout=ConditionDropout(), ssl_names=ssl_names), torch.device("cpu"), compute)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            terms = FAMILY.training_loss(model, batch, shift=3.0, ssl_coeff=1.0)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(setup.params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"params": setup.config["parameters"], "time_s": statistics.median(times), "peak_rss_gb": peak / 2**30}


def measured_table(threads: int = 2) -> list[tuple]:
    """Each case in its own process (a clean peak RSS)."""
    import json
    import os
    import subprocess

    rows = []
    for case in MEASURED:
        code = (f"import json, sys, torch; torch.set_num_threads({threads}); sys.path.insert(0, {str(HERE)!r}); "
                f"import full_finetune as f; print(json.dumps(f.measure_full(*{case!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        rows.append((*case, json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


def main() -> int:
    if "--measure" in sys.argv:
        print("full fine-tune measured on this CPU (2 threads; median of 3 steps after 1 warm-up; peak RSS of the "
              "process)")
        print("| config | parameters | precision | audio | optimizer | s/step | peak RSS (GiB) |")
        print("|---|---|---|---|---|---|---|")
        for name, precision, length, opt, r in measured_table():
            print(f"| {name} | {r['params'] / 1e6:.1f}M | {precision} | {length} | {opt} | {r['time_s']:.3f} | "
                  f"{r['peak_rss_gb']:.2f} |")
        return 0
    print(f"full fine-tune, analytic peak at {SECONDS} s, bf16 autocast, gradient checkpointing")
    print(f"| model | parameters | optimizer state scheme | 1 GPU (GB) | fits {GPU_GB:.0f} GB | per GPU of 8, FSDP (GB) |")
    print("|---|---|---|---|---|---|")
    for name, scheme, one, eight, n in table():
        print(f"| {name} | {n / 1e9:.2f}B | {scheme} | {one:.1f} | {'yes' if one <= GPU_GB else 'no'} | {eight:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
