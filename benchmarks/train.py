"""Benchmark acetune's training step on CPU: time per optimizer step and peak RSS, plus the official peak.

The measured step is the trainer's own: `make_batch` -> `V1Family.training_loss` (noise, logit-normal
timestep, forward, masked MSE + SSL losses) -> backward -> clip -> AdamW step, with the run's memory
features on (unused `cross_attn.add_*` never resident, lyric-encoder output cached, LoRA fp32 over
bf16 weights under autocast, peft's input cast off as `training.loop.fit` does). Cases as
../shared/facts/reference-baseline.md: batch 1, text 20 tokens, lyrics 200 tokens, SSL targets at
75 Hz / 50 Hz (dims from the config: 1024/768 medium, 24/16 tiny), rsLoRA r 64 alpha 1 on
to_q/to_k/to_v/to_out.0, gradient checkpointing, det_init weights, 2 threads, medians of 5 after 2
warm-ups, each case in its own process (peak RSS includes the imports); the LR scheduler steps too. Shared machines are noisy:
compare runs made at the same time.

The official 3.5B at 360 s is estimated, not run: weights and LoRA state are counted exactly on a
meta-device model; activations are the distinct storages autograd saves under (emulated) bf16
autocast, parameters excluded (counted with `saved_tensors_hooks` on meta tensors, so nothing is
computed): the checkpointed whole-model forward, plus the largest recompute (one block, or the SSL
projectors), plus 3x its largest saved tensor for gradient transients. `--check_analytic` runs the
medium config at 360 s for real and compares its measured peak growth with the same estimate.

    python benchmarks/train.py                      # all cases (~5 min on 2 cores)
    python benchmarks/train.py --analytic           # only the official estimate (seconds)
    python benchmarks/train.py --check_analytic     # estimate vs measurement, medium config, 360 s (~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

FRAMES = {"10s": 108, "60s": 646, "360s": int(360 * 44100 / 512 / 8)}
SSL_HZ = (75, 50)
LORA = {"r": 64, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
CASES = [("tiny", "fp32", "10s"), ("tiny", "fp32", "60s"), ("medium", "bf16", "10s"), ("medium", "bf16", "60s"),
         ("medium", "fp32", "10s"), ("medium", "fp32", "60s")]
# reference-baseline.md medians (time range in s, peak RSS GB) for the same cases
REFERENCE = {("tiny", "fp32", "10s"): ("0.035-0.050", "0.69"), ("tiny", "fp32", "60s"): ("0.074-0.084", "0.71"),
             ("medium", "bf16", "10s"): ("0.69-0.93", "1.3-1.4"), ("medium", "bf16", "60s"): ("2.29-2.89", "1.5-1.7"),
             ("medium", "fp32", "10s"): ("1.12-1.49", "1.9"), ("medium", "fp32", "60s"): ("3.44-3.99", "2.3")}


def configs() -> dict[str, dict]:
    from acetune.models.v1.transformer import tiny_transformer_config

    medium = dict(num_layers=6, num_attention_heads=8, attention_head_dim=128, ssl_encoder_depths=[3, 3])
    return {"tiny": tiny_transformer_config(), "medium": medium, "official": {}}


def build(name: str, dtype, device="cpu"):
    """Model with det_init weights, add_* dropped, rsLoRA r64 (fp32 LoRA over `dtype` weights)."""
    import torch

    from acetune.models.v1.transformer import build_transformer
    from acetune.parity.det_init import det_init_
    from acetune.training.lora import add_lora

    model = build_transformer(configs()[name])  # meta
    model.drop_unused_projections()
    if device == "cpu":
        det_init_(model)
        model.to(dtype)
    else:
        model.to(dtype)
    model.enable_gradient_checkpointing()
    setup = add_lora(model, LORA, lora_dtype=torch.float32)
    return model.train(), setup


def sample(cfg, length: str):
    import torch

    from acetune.training.data import Sample

    frames, seconds = FRAMES[length], int(length[:-1])
    g = torch.Generator().manual_seed(0)
    return Sample(key="bench", latents=torch.randn(8, 16, frames, generator=g),
                  text_embeds=torch.randn(1, 20, cfg.text_embedding_dim, generator=g), text_mask=torch.ones(1, 20),
                  lyric_ids=torch.randint(1, 6000, (200,), generator=g), lyric_mask=torch.ones(200),
                  speaker=torch.zeros(cfg.speaker_embedding_dim),
                  ssl={n: torch.randn(seconds * hz, d, generator=g)
                       for n, hz, d in zip(cfg.ssl_names, SSL_HZ, cfg.ssl_latent_dims)})


def _rss_gb() -> float:
    """Current resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):
        return 0.0


def measure(name: str, dtype_name: str, length: str, repeats: int = 5, warmup: int = 2,
            cached_lyrics: bool = True) -> dict:
    """Median seconds per step, peak RSS (GiB), and the peak's growth over the RSS before the first step (GB).

    cached_lyrics=False runs the lyric encoder in every step (the fork's way) instead of the cache."""
    import torch

    from acetune.models.v1.family import FAMILY
    from acetune.training.data import ConditionDropout, LyricCache, batch_to, make_batch
    from acetune.training.lora import lora_input_casting
    from acetune.training.optim import build_lr_scheduler, build_optimizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model, setup = build(name, dtype)
    s = sample(model.config, length)
    cache = LyricCache() if cached_lyrics else None
    if cache is not None:
        cache.fill(model, [s], torch.device("cpu"), dtype)
    FAMILY.prepare_for_training(model, use_ssl=True, drop_lyric_path=cached_lyrics)
    optimizer = build_optimizer(setup.params, "adamw", lr=1e-4)
    scheduler = build_lr_scheduler(optimizer, optimizer_name="adamw")
    ssl_names = tuple(model.config.ssl_names)
    times = []
    autocast = dtype == torch.bfloat16
    before = _rss_gb()
    with lora_input_casting(model, enabled=not autocast):  # as `training.loop.fit`
        for i in range(warmup + repeats):
            start = time.perf_counter()
            batch = batch_to(make_batch([s], dropout=ConditionDropout(), lyric_cache=cache, ssl_names=ssl_names),
                             torch.device("cpu"), dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                terms = FAMILY.training_loss(model, batch, shift=3.0, ssl_coeff=1.0)
            terms.loss.backward()
            torch.nn.utils.clip_grad_norm_(setup.params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)
    return {"time_s": statistics.median(times), "peak_rss_gb": peak / 2**30, "growth_gb": peak / 1e9 - before}


# ---- the official config at 360 s, estimated ----

def _meta_autocast():
    """`torch.autocast("cpu", bfloat16)` for meta tensors, which real autocast does not see: the ops autocast
    runs in bf16 get bf16 inputs (so autograd saves the casts, as it does under autocast), `mse_loss` fp32.
    On the medium config at 200 frames it saves exactly the tensors real autocast saves (shapes and dtypes)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    lower = {F.linear, F.conv1d, F.conv2d, torch.matmul, torch.bmm, torch.mm, torch.addmm, torch.Tensor.matmul,
             torch.Tensor.__matmul__, F.scaled_dot_product_attention}

    class MetaAutocast(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            dtype = torch.bfloat16 if func in lower else torch.float32 if func is F.mse_loss else None
            if dtype is not None:
                def cast(t):
                    return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                args, kwargs = tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
            return func(*args, **kwargs)

    return MetaAutocast()


def _saved_bytes(fn, exclude: set) -> tuple[int, int]:
    """(total, largest) bytes of the distinct storages autograd saves while running `fn` under bf16 autocast
    (meta tensors: nothing is computed). A storage saved by several ops counts once; `exclude` holds the
    storages already counted elsewhere (the model's parameters)."""
    import torch

    sizes: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            sizes[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _meta_autocast():
        fn()
    return sum(sizes.values()), max(sizes.values(), default=0)


def _nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) dict/list."""
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return obj.numel() * obj.element_size() if hasattr(obj, "element_size") else 0


def analytic_official(seconds: int = 360, ssl: bool = True, config: str = "official") -> list[tuple[str, float, float]]:
    """[(term, GB bf16, GB int8)] for training the official config (or `config`), LoRA r64, lyrics cached.

    Peak = weights + LoRA state + what the checkpointed forward saves + the largest backward transient:
    one block's recompute (or the SSL projectors' recompute, which happens at another moment) plus 3x
    its largest saved tensor for the gradients in flight.
    """
    import torch

    from acetune.models.v1.attention import cross_attention_mask, rope_tables
    from acetune.models.v1.family import FAMILY
    from acetune.models.v1.transformer import projected_loss
    from acetune.training.lora import lora_input_casting

    model, setup = build(config, torch.bfloat16, device="meta")
    if not ssl:
        model.projectors = torch.nn.ModuleList()
    cfg = model.config
    w, frames = model.inner_dim, int(seconds * 44100 / 512 / 8)
    freed = {"cross_attn.add_*": 4 * (w * w + w) * cfg.num_layers}
    lyric_params = sum(p.numel() for m in (model.lyric_embs, model.lyric_encoder, model.lyric_proj)
                       for p in m.parameters())
    model.lyric_embs = model.lyric_encoder = model.lyric_proj = None  # cached output instead
    base = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    bf16 = sum(p.numel() for _, p in base) * 2
    # int8 (`training.quantize.quantize_int8`): every Linear and kernel-1 Conv1d weight inside the blocks ->
    # 1 byte + one bf16 scale per output row
    quantized = [m.weight for m in model.transformer_blocks.modules()
                 if (isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv1d) and m.kernel_size == (1,)
                                                        and m.groups == 1)) and not m.weight.requires_grad]
    linear_w = sum(w.numel() for w in quantized)
    linear_rows = sum(w.shape[0] for w in quantized)
    int8 = bf16 - linear_w * 2 + linear_w + linear_rows * 2
    lora_state = sum(p.numel() for p in setup.params) * 4 * 4  # fp32 param + grad + 2 AdamW moments
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def t(*shape, dtype=torch.bfloat16):
        return torch.zeros(*shape, device="meta", dtype=dtype)

    ssl_targets = [[t(seconds * hz, d)] for hz, d in zip(SSL_HZ, cfg.ssl_latent_dims)] if ssl else None
    b = {"target_latents": t(1, 8, 16, frames), "attention_mask": t(1, frames),
         "encoder_text_hidden_states": t(1, 20, 768), "text_attention_mask": t(1, 20), "speaker_embeds": t(1, 512),
         "lyric_token_idx": t(1, 200, dtype=torch.long), "lyric_mask": t(1, 200),
         "lyric_hidden_states": t(1, 200, w), "ssl_hidden_states": ssl_targets}
    noise, u = torch.zeros_like(b["target_latents"]), torch.zeros(1)
    inputs = _nbytes(b)
    x = t(1, frames, w).requires_grad_()
    ctx, temb = t(1, 221, w), t(1, 6 * w)
    rope = rope_tables(frames, cfg.attention_head_dim, cfg.rope_theta, torch.device("meta"))
    rope_c = rope_tables(221, cfg.attention_head_dim, cfg.rope_theta, torch.device("meta"))
    allowed = cross_attention_mask(torch.ones(1, frames, device="meta"), torch.ones(1, 221, device="meta"))
    block = model.transformer_blocks[0]
    with lora_input_casting(model, enabled=False):  # as `training.loop.fit` under autocast
        whole, _ = _saved_bytes(lambda: FAMILY.training_loss(model, b, noise=noise, u=u), params)
        one_block, largest = _saved_bytes(lambda: block(x, None, ctx, allowed, temb, rope, rope_c), params)
        transient = one_block + 3 * largest
        if ssl:  # the projectors are recomputed in the backward too (`ACEStepTransformer2DModel.decode`)
            proj, proj_largest = _saved_bytes(lambda: [projected_loss(p, x, z) for p, z in
                                                       zip(model.projectors, ssl_targets)], params)
            transient = max(transient, proj + 3 * proj_largest)
    gb = 1e9
    terms = [
        ("base weights (add_* never loaded, lyric path cached)", bf16 / gb, int8 / gb),
        ("LoRA r64 fp32 params + grads + AdamW", lora_state / gb, lora_state / gb),
        ("batch (latents, conditions, SSL targets)", inputs / gb, inputs / gb),
        ("activations: checkpointed forward (saved)", whole / gb, whole / gb),
        ("activations: largest recompute + grad transients", transient / gb, transient / gb),
    ]
    total_bf16, total_int8 = sum(t[1] for t in terms), sum(t[2] for t in terms)
    terms.append(("total", total_bf16, total_int8))
    terms.append((f"(saved by the memory features: add_* {freed['cross_attn.add_*'] * 2 / gb:.2f} GB, "
                  f"lyric path {lyric_params * 2 / gb:.2f} GB)", float("nan"), float("nan")))
    return terms


def check_analytic(threads: int) -> None:
    """The estimate's activation and LoRA-state terms vs the measured peak growth of a real run (medium, 360 s).

    glibc keeps freed blocks of up to 32 MB on its heap, which inflates RSS beyond what is allocated; the
    measured run sets a fixed 64 KB mmap threshold so RSS follows the allocations (a GPU's caching
    allocator behaves like the estimate too). The LoRA weights are resident before the first step, so
    the comparison counts grads + AdamW moments + activations.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--case", "medium", "bf16", "360s",
                          "--repeats", "1"], capture_output=True, text=True, env=env)
    if res.returncode:
        print(f"medium 360 s failed: {res.stderr.strip().splitlines()[-1:]}")
        return
    measured = json.loads(res.stdout.strip().splitlines()[-1])["growth_gb"]
    terms = dict((label, a) for label, a, _ in analytic_official(seconds=360, config="medium"))
    lora = [v for k, v in terms.items() if k.startswith("LoRA")][0] * 3 / 4  # grads + 2 moments of 4 fp32 copies
    estimate = lora + sum(v for k, v in terms.items() if k.startswith(("activations", "batch")))
    print(f"medium config, bf16, 360 s: measured peak growth {measured:.2f} GB, estimate {estimate:.2f} GB "
          f"(LoRA grads + moments {lora:.2f}, activations {estimate - lora:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analytic", action="store_true", help="only the official-config estimate")
    ap.add_argument("--check_analytic", action="store_true", help="estimate vs a real run (medium, 360 s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per case (the reference used 2)")
    ap.add_argument("--case", nargs=3, metavar=("CONFIG", "DTYPE", "LENGTH"), help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.case, repeats=args.repeats)))
        return 0
    if args.check_analytic:
        check_analytic(args.threads)
        return 0
    if not args.analytic:
        print(f"{'config':<7} {'dtype':<5} {'audio':>5} {'s/step':>8} {'peak RSS GB':>12}   reference s/step, GB "
              f"({args.threads} threads)")
        for case in CASES:
            res = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--case", *case],
                                 capture_output=True, text=True)
            if res.returncode:
                print(f"{' '.join(case)}: failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            ref = REFERENCE[case]
            print(f"{case[0]:<7} {case[1]:<5} {case[2]:>5} {r['time_s']:>8.3f} {r['peak_rss_gb']:>12.2f}   "
                  f"{ref[0]} s, {ref[1]} GB", flush=True)
    for ssl in (True, False):
        print(f"\nofficial config, 360 s, LoRA r64, SSL {'on' if ssl else 'off (no projectors)'}, gradient "
              "checkpointing (estimate; goal < 10 GB bf16 / < 6 GB int8):")
        print(f"  {'term':<58} {'bf16 GB':>8} {'int8 GB':>8}")
        for label, a, b in analytic_official(ssl=ssl):
            print(f"  {label:<58} {a:>8.2f} {b:>8.2f}" if a == a else f"  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
