"""acetune beside the woct0rdho/ACE-Step fork: the same work on both sides, interleaved, one markdown table.

Each case runs the fork's own code (imported from `--fork_dir`, run by `--fork_python`, a scratch venv
that is never part of this repo) and acetune's, each in a fresh process, alternated fork, acetune,
fork, acetune (`--rounds`); every process does 2 warm-ups + 5 timed calls and reports their median and
its peak RSS (whole process, imports included). A figure is the median over the rounds; the ratio is the
median of the per-round ratios (each pair ran back to back). 2 torch threads on both sides.

The work of each case (identical inputs on both sides; weights: the golden deterministic rule, no
downloads):

  train-official-10s, train-medium-10s, train-medium-60s
      One LoRA training step of the v1 transformer (official config, or medium: 6 layers, 8 x 128 = 1024
      wide, official lyric encoder), bf16, 10 s / 60 s of latents (108 / 646 frames), batch 1, text 20
      tokens, lyrics 200 tokens, SSL targets 1024-d at 75 Hz and 768-d at 50 Hz (SSL losses on), rsLoRA
      r 64 alpha 1 on to_q/to_k/to_v/to_out.0, gradient checkpointing as the fork does it (every
      block), then clip-grad-norm 1.0 + AdamW + LR-scheduler step + zero_grad.
      fork: `trainer_new.Pipeline.training_step` (its noise, timestep, loss and logging code) under
      `torch.autocast("cpu", bfloat16)` (Lightning's bf16-mixed) on the whole model cast to bf16, with
      the optimizer and scheduler of its `configure_optimizers`; the lyric encoder runs in every step.
      acetune: `benchmarks/train.py::measure` (the trainer's step) five times (`--variants` picks): "lyric
      encoder each step" (the fork's work), "cached lyric path" (acetune's default: encoder output computed
      once), "budget": the cached path with `--gradient_checkpointing auto --memory_budget_gb 24`: the
      blocks the trainer's own plan checkpoints for a 24 GB GPU at this length (none here; the plan is
      printed to stderr), and "compile": budget plus `--compile` (the blocks torch.compile'd); its 3
      untimed first steps hold the compilation and are reported on a row of their own; "int8": the cached
      path with `--int8` (each block's linears int8 as it is made, as the trainer's load does; every
      block checkpointed, as the fork): the memory lever.
  dcae-encode-official-30s
      30 s of 48 kHz stereo -> latents with the official-size DCAE in bf16: resample to 44.1 kHz,
      log-mel, normalise, DCAE encoder, scale. fork: `MusicDCAE.encode`; acetune: `MusicDCAE.encode`.
      Each side casts the input as its preprocess does (fork: bf16 audio; acetune: fp32 audio).
  audio-path-180s
      A 180 s 44.1 kHz stereo 16-bit WAV -> normalised DCAE input: decode, the loader's rules (stereo,
      clamp, pad), resample to 48 kHz, resample to 44.1 kHz, log-mel, normalise; each side in the dtype
      its preprocess uses (fork: bf16 after loading, as `Preprocessor.preprocess` casts the batch;
      acetune: fp32). fork: `Text2MusicDataset.get_audio`, then `MusicDCAE.resampler`, `forward_mel`
      and `transform` with the two lines of `encode` between them (pad to 4096, min/max scaling);
      acetune: `audio.io.load_song`, `audio.resample.resample`, `MusicDCAE.dcae_input`.

  preprocess-official
      A whole preprocess run, SSL on, of the same 6 songs (acetune's demo-song synthesiser; 10-50 s,
      120 s in all; wav and mp3; 44.1 and 48 kHz; one with lyrics; tag prompts; `vs_fork_prep.SONGS`)
      with the same encoder folders, one fresh process per run: the official-size DCAE + vocoder and
      UMT5-base (official configs, det_init weights; a small trained tokenizer), the golden lyric vocab,
      and MERT / mHuBERT stand-ins: HubertModel folders in the released models' shapes (MERT-v1-330M
      1024 x 24 layers at 24 kHz, mHuBERT-147 768 x 12 at 16 kHz; det_init), loaded by both sides with
      transformers `AutoModel` (MERT's own remote code is HuBERT plus options the 330M model leaves off;
      it cannot be fetched here). bf16 compute on both sides (the fork's choice on a bf16 GPU).
      fork: `preprocess_dataset_new.main` on the fork's `convert2hf_dataset_new` dataset of the songs
      (made untimed): its `Preprocessor` loads the codec and UMT5 through `ACEStepPipeline`, compiles
      the DCAE encoder and UMT5 (`torch.compile`, as it does), loads MERT and mHuBERT from the HF cache
      layout under --checkpoint_dir, then per song (DataLoader, batch 1): decode, resample to 48 kHz,
      MERT, mHuBERT (all chunks of a song in one batch), UMT5 of the one prompt it draws, DCAE encode in
      one pass, and writes the Arrow dataset. Kept on the CPU by a subclass (see
      `vs_fork_side.fork_preprocess`). Not removable: the fork also loads the 3.5B transformer in
      `ACEStepPipeline.load_checkpoint` and deletes it unused; that load is skipped here (it needs a
      7 GB checkpoint and the big-memory lock), so the fork's "incl. load" figure is lower than its
      real run's.
      acetune: `acetune preprocess` in-process (`cli.run_command`) with `--dtype bfloat16
      --prompt_variants 1` (the fork's dtype, its one prompt per song) and each lever of
      `vs_fork_prep.LEVERS` in turn (`--variants`): defaults (2 decode threads ahead), bf16 linear
      weights packed once (`pack`, `--pack_weights`), decoding inline, `--batch_songs`,
      `--compile`, and acetune's default of 4 prompt variants (more work than the fork's). Its
      stored rows differ by design (SSL quantised and entropy-coded, windowed DCAE for songs over
      47.5 s, bf16 storage): each side stores what its trainer reads.
      Figures: wall seconds of the entry call (imports excluded) and songs/s, with and without the
      encoders' load (fork: `Preprocessor.__init__`; acetune: `stages.preprocess.load_encoders`), and
      the peak RSS of the process. One run per process (no warm-up: a first song paying a compile is
      part of a whole run).

The fork's scratch env (never committed; shown for torch 2.13 CPU): the fork's files at its commit in
/tmp/fork-src; `python -m venv --system-site-packages /tmp/scratch-fork` (global torch, diffusers,
transformers, peft, datasets); `pip install pytorch-lightning==2.6.6 natsort==8.4.0 loguru==0.7.3
hangul-romanize==0.1.0 spacy==3.8.18`; `pip install --no-deps torchaudio==2.11.0` with its lib/*.so
moved away (only its pure-Python transforms are used); no torchvision.

Stand-ins on the fork side (the scratch env cannot load the PyPI torchaudio/torchvision CUDA builds'
C++ ops on torch 2.13 CPU; pure-Python parts of torchaudio are used as they are): `torchaudio.load` =
soundfile decoding to float32 channels-first (what torchaudio's soundfile backend returned), and
`torchvision.transforms.Normalize(0.5, 0.5)` = (x - 0.5) / 0.5, installed only if the real ones fail.

    python benchmarks/vs_fork.py --case train-medium-10s            # one case, interleaved
    python benchmarks/vs_fork.py --case train-medium-60s --variants budget compile   # the fastest variants
    python benchmarks/vs_fork.py                                     # every case (official ones: ~8 GB)
    python benchmarks/vs_fork.py --case audio-path-180s --acetune_only   # our side alone, quick check
    python benchmarks/vs_fork.py --case preprocess-official --variants default batch   # whole preprocess
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vs_fork_prep  # noqa: E402
from vs_fork_side import fork_env, fork_other, fork_preprocess, fork_train, peak_rss_gb, time_calls  # noqa: E402

TRAIN_CASES = {"train-official-10s": ("official", 10), "train-medium-10s": ("medium", 10),
               "train-medium-60s": ("medium", 60)}
OTHER_CASES = {"dcae-encode-official-30s": 30, "audio-path-180s": 180}
PREP_CASE = "preprocess-official"
CASES = (*TRAIN_CASES, *OTHER_CASES, PREP_CASE)
BIG = {"train-official-10s", PREP_CASE}  # > 4 GB (~8 GB, ~4.3 GB): run under the shared big-memory lock
# acetune variants per case: (variant id, label)
GPU_BUDGET_GB = 24  # the "budget" variant: checkpoint only what a 24 GB GPU needs (none at these lengths)
VARIANTS = {case: [("lyric-each-step", "lyric encoder each step"), ("cached", "cached lyric path"),
                   ("budget", f"cached, `--gradient_checkpointing auto --memory_budget_gb {GPU_BUDGET_GB}`"),
                   ("compile", f"cached, `--gradient_checkpointing auto --memory_budget_gb {GPU_BUDGET_GB} --compile`"),
                   ("int8", "cached, `--int8` (int8 base weights), every block checkpointed")]
            for case in TRAIN_CASES}
COMPILE_WARMUP = 1  # the compile variant's extra untimed step: it compiles at its first step, again at its second
# (the shapes become dynamic); its warm-up seconds (compilation included) get their own row
VARIANTS[PREP_CASE] = [(v, label) for v, (label, _) in vs_fork_prep.LEVERS.items()]
WORK = {"train-official-10s": "LoRA train step, official config, bf16, 10 s",
        "train-medium-10s": "LoRA train step, medium config, bf16, 10 s",
        "train-medium-60s": "LoRA train step, medium config, bf16, 60 s",
        "dcae-encode-official-30s": "DCAE encode, official config, bf16, 30 s",
        "audio-path-180s": "audio path, 180 s song (decode, 48k, 44.1k, log-mel, normalise)",
        PREP_CASE: f"whole preprocess, {len(vs_fork_prep.SONGS)} songs "
                   f"{sum(s[1] for s in vs_fork_prep.SONGS)} s, official-size encoders, SSL on"}


# ---- shared inputs, made once by the parent (acetune's env) ----

def prepare(case: str, work_dir: Path) -> None:
    """Write what both sides read: a generated official-layout codec checkpoint, the input audio."""
    import numpy as np
    import soundfile

    work_dir.mkdir(parents=True, exist_ok=True)
    if case in (*OTHER_CASES, PREP_CASE) and not (work_dir / "codec" / "music_dcae_f8c8" / "config.json").is_file():
        from diffusers import AutoencoderDC

        from acetune.models.v1.dcae import MusicDCAE, official_dcae_config
        from acetune.models.v1.vocoder import ADaMoSHiFiGANV1
        from acetune.parity.det_init import det_init_

        dcae, vocoder = AutoencoderDC(**official_dcae_config()), ADaMoSHiFiGANV1()
        det_init_(dcae)
        det_init_(vocoder)
        MusicDCAE(dcae, vocoder).save_pretrained(work_dir / "codec")
    if case == "audio-path-180s" and not (work_dir / "song180.wav").is_file():
        rate, n = 44100, 180 * 44100
        t = np.arange(n) / rate
        rng = np.random.default_rng(0)
        tone = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((110.0, 220.0, 330.0, 440.0)))
        left = 0.15 * tone + 0.02 * rng.standard_normal(n)
        right = 0.15 * np.roll(tone, 441) + 0.02 * rng.standard_normal(n)
        soundfile.write(work_dir / "song180.wav", np.stack([left, right], 1).astype(np.float32), rate,
                        subtype="PCM_16")
    if case == "dcae-encode-official-30s" and not (work_dir / "audio30_48k.npy").is_file():
        rng = np.random.default_rng(1)
        t = np.arange(30 * 48000) / 48000
        wav = 0.2 * np.sin(2 * np.pi * 220.0 * t)[None] + 0.05 * rng.standard_normal((2, t.size))
        np.save(work_dir / "audio30_48k.npy", wav.astype(np.float32))
    if case == PREP_CASE:
        golden = Path(os.environ.get("ACETUNE_GOLDEN", HERE.parents[1] / "shared" / "golden"))
        vs_fork_prep.prepare(work_dir, work_dir / "codec", golden)


# ---- acetune's side ----

def acetune_side(case: str, variant: str, work_dir: Path, warmup: int, repeats: int) -> dict:
    import torch

    if case == PREP_CASE:
        return vs_fork_prep.acetune_preprocess(work_dir / "prep", variant)
    if case in TRAIN_CASES:
        import train as train_bench

        config, seconds = TRAIN_CASES[case]
        compiled = variant == "compile"
        r = train_bench.measure(config, "bf16", f"{seconds}s", repeats=repeats,
                                warmup=warmup + (COMPILE_WARMUP if compiled else 0),
                                cached_lyrics=variant != "lyric-each-step",
                                budget_gb=GPU_BUDGET_GB if variant in ("budget", "compile") else 0.0,
                                compile=compiled, int8=variant == "int8")
        return {"time_s": r["time_s"], "peak_rss_gb": r["peak_rss_gb"], "warmup_s": sum(r["warmup_s"])}
    from acetune.models.v1.dcae import MusicDCAE

    if case == "dcae-encode-official-30s":
        import numpy as np

        codec = MusicDCAE.from_pretrained(work_dir / "codec", dtype=torch.bfloat16)
        wav = torch.from_numpy(np.load(work_dir / "audio30_48k.npy"))[None]

        def run():
            codec.encode(wav, torch.tensor([wav.shape[-1]]))
    else:
        from acetune.audio.io import load_song
        from acetune.audio.resample import resample

        codec = MusicDCAE.from_pretrained(work_dir / "codec")
        path = work_dir / "song180.wav"

        def run():
            with torch.inference_mode():
                return codec.dcae_input(resample(load_song(path), 48000, 44100)[None])
    return {"time_s": time_calls(run, warmup, repeats), "peak_rss_gb": peak_rss_gb()}


# ---- the parent: interleaved rounds and the table ----

def run_worker(args, side: str, case: str, variant: str) -> dict:
    """One measurement in a fresh process of `side`'s Python; raises RuntimeError with the last error line."""
    cmd = [args.fork_python if side == "fork" else sys.executable, __file__, "--worker", side, case, variant,
           "--fork_dir", str(args.fork_dir), "--work_dir", str(args.work_dir),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), ACETUNE_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    if side == "fork":
        env.pop("PYTHONPATH", None)
    if case in BIG and not args.no_lock:
        cmd = ["flock", args.lock, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.fork_dir if side == "fork" else None)
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        raise RuntimeError((res.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(lines[-1])


def summarize(fork_runs: list[dict], ours: list[dict], key: str) -> tuple[float | None, float, float | None]:
    """(fork median, acetune median, median of the per-round acetune/fork ratios); fork None if not run."""
    mine = statistics.median(r[key] for r in ours)
    if not fork_runs:
        return None, mine, None
    ratios = [o[key] / f[key] for f, o in zip(fork_runs, ours)]
    return statistics.median(r[key] for r in fork_runs), mine, statistics.median(ratios)


def format_rows(case: str, fork_runs: list[dict], ours: dict[str, list[dict]]) -> list[str]:
    """Markdown rows `work | fork | acetune | acetune/fork` for one case (time; peak RSS for training)."""
    out = []
    keys = [("time_s", "s", "")] + ([("peak_rss_gb", "GB", "peak RSS, ")] if case in TRAIN_CASES else [])
    for key, unit, prefix in keys:
        for variant, label in VARIANTS.get(case, [("default", "")]):
            if variant not in ours:
                continue
            f, a, ratio = summarize(fork_runs, ours[variant], key)
            work = f"{prefix}{WORK[case]}" + (f" ({label})" if label else "")
            fork = "—" if f is None else f"{f:.3g} {unit}"
            out.append(f"| {work} | {fork} | {a:.3g} {unit} | " + ("—" if ratio is None else f"**{ratio:.2f}**") + " |")
    if ours.get("compile"):
        first = statistics.median(r["warmup_s"] for r in ours["compile"])
        out.append(f"| {WORK[case]}: the compile variant's untimed first steps (compilation; not in its step time) "
                   f"| — | {first:.3g} s | — |")
    return out


def format_prep_rows(fork_runs: list[dict], ours: dict[str, list[dict]]) -> list[str]:
    """Whole-preprocess rows: per acetune variant, wall s and songs/s with and without the encoders' load;
    peak RSS of the first variant. The ratio is acetune/fork of the seconds (<= 0.5 is >= 2x the songs/s)."""
    def cell(runs: list[dict], value: float | None, key: str) -> str:
        if value is None:
            return "—"
        songs = statistics.median(r["songs"] for r in runs)
        return f"{value:.3g} s ({songs / value:.3g} songs/s)" if key != "peak_rss_gb" else f"{value:.3g} GB"

    out = []
    for key, what in (("time_s", "whole run incl. model load"), ("encode_s", "encoding only (load excluded)")):
        for variant, label in VARIANTS[PREP_CASE]:
            if variant not in ours:
                continue
            f, a, ratio = summarize(fork_runs, ours[variant], key)
            out.append(f"| {WORK[PREP_CASE]}, {what}: acetune {label} | {cell(fork_runs, f, key)} | "
                       f"{cell(ours[variant], a, key)} | " + ("—" if ratio is None else f"**{ratio:.2f}**") + " |")
    first, label = next((v, label) for v, label in VARIANTS[PREP_CASE] if v in ours)
    f, a, ratio = summarize(fork_runs, ours[first], "peak_rss_gb")
    out.append(f"| peak RSS, {WORK[PREP_CASE]}: acetune {label} | {cell(fork_runs, f, 'peak_rss_gb')} | "
               f"{cell(ours[first], a, 'peak_rss_gb')} | " + ("—" if ratio is None else f"**{ratio:.2f}**") + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="*", choices=CASES, default=list(CASES), help="cases to run (default: all)")
    ap.add_argument("--acetune_only", action="store_true", help="time acetune's side alone (no fork, no ratios)")
    ap.add_argument("--fork_dir", type=Path, default=Path("/tmp/fork-src"), help="the fork's source tree")
    ap.add_argument("--fork_python", default="/tmp/scratch-fork/bin/python", help="Python of the fork's scratch venv")
    ap.add_argument("--work_dir", type=Path, default=Path("/tmp/acetune-vs-fork"),
                    help="generated checkpoint and audio shared by both sides (made once, reused)")
    ap.add_argument("--rounds", type=int, default=2, help="fork/acetune alternations per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per process")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per process (the median is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--lock", default="/tmp/acetune-bigmem.lock", help="flock file for the official-size cases")
    ap.add_argument("--no_lock", action="store_true", help="do not take the big-memory lock (caller holds it)")
    ap.add_argument("--variants", nargs="*", choices=sorted({v for vs in VARIANTS.values() for v, _ in vs}),
                    help=f"acetune variants to run (default: all, in this order: train cases "
                         f"{', '.join(v for v, _ in VARIANTS[next(iter(TRAIN_CASES))])}; {PREP_CASE} "
                         f"{', '.join(v for v, _ in VARIANTS[PREP_CASE])})")
    ap.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        side, case, variant = args.worker
        if side == "fork":
            fork_env(args.fork_dir)
            if case == PREP_CASE:
                r = fork_preprocess(args.fork_dir, args.work_dir / "prep")
            elif case in TRAIN_CASES:
                r = fork_train(args.fork_dir, *TRAIN_CASES[case], args.warmup, args.repeats)
            else:
                r = fork_other(case, args.work_dir, args.warmup, args.repeats)
        else:
            r = acetune_side(case, variant, args.work_dir, args.warmup, args.repeats)
        print(json.dumps(r))
        return 0
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
          f"{args.threads} threads, {args.rounds} rounds x (fork, acetune), {args.warmup} + {args.repeats} calls",
          file=sys.stderr)
    print("| work | fork | acetune | acetune/fork |\n|---|---|---|---|", flush=True)
    failed = 0
    for case in args.case:
        prepare(case, args.work_dir)
        fork_runs, ours = [], {v: [] for v, _ in VARIANTS.get(case, [("default", "")])
                               if case not in VARIANTS or not args.variants or v in args.variants}
        try:
            for _ in range(args.rounds):
                if not args.acetune_only:
                    fork_runs.append(run_worker(args, "fork", case, "default"))
                for variant in ours:
                    ours[variant].append(run_worker(args, "acetune", case, variant))
                print(f"  {case}: fork {[round(r['time_s'], 3) for r in fork_runs]} acetune "
                      f"{ {v: [round(r['time_s'], 3) for r in rs] for v, rs in ours.items()} }", file=sys.stderr)
        except RuntimeError as err:
            print(f"| {WORK[case]} | failed: {err} | | |", flush=True)
            failed += 1
            continue
        rows = format_prep_rows(fork_runs, ours) if case == PREP_CASE else format_rows(case, fork_runs, ours)
        print("\n".join(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
