"""See the whole pipeline run on this machine, offline, on a tiny generated model and generated songs.

Writes into --workdir: a tiny ACE-Step v1 checkpoint in the official folder layout (random weights,
with its own small lyric vocab), four short synthesised songs with the fork's sidecars, then runs
build-dataset -> preprocess -> train (overfit the songs: no condition dropout, high LR, validation
renders at the first and last step; the loss on the songs with fixed noise is measured before and
after) -> export (alpha baked, ComfyUI keys) -> generate with the exported LoRA. Every stage is the same
`run(args)` a real run uses; only the model and the sizes are tiny. Each stage's command line,
its own summary and its outputs are printed, then one table. The music the tiny model makes is
noise: the demo proves the plumbing, not the sound. See docs/demo.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from acetune.cli import arg, parse_args
from acetune.errors import TrainingError, UsageError

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  acetune demo                                   # everything under ./acetune_demo, a few minutes on a CPU
  acetune demo --workdir /tmp/demo --quick       # smaller songs and fewer steps (CI)
  acetune demo --model_family acestep15 --quick  # the same stages on a tiny ACE-Step 1.5 (diffusers) model
  tensorboard --logdir acetune_demo/runs/demo/logs   # afterwards: the training curves and renders
"""

MARKER = ".acetune_demo"  # marks a folder the demo made, so a rerun may clear it
SUMMARY_FILE = "demo_summary.json"
CHECKPOINT = "ACE-Step-v1-tiny"
CHECKPOINT_V15 = "acestep-v15-tiny"  # --model_family acestep15: `models.v15.tiny.save_tiny_checkpoint_v15`
FAMILIES = ("ace-step-v1", "acestep15")
# LoRA of the demo's tiny transformer (width 128): rank 16 instead of the real default 64.
DEMO_LORA_CONFIG = {"r": 16, "lora_alpha": 16, "use_rslora": False, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
_SPECIAL = ["[STOP]", "[UNK]", "[SPACE]"]  # ids 0, 1, 2, as the real vocab (lyrics.tokenizer)
# Added after the 259 BPE entries in the real vocab's order, so [en] = 259 and [START] = 261.
_ADDED = ["[en]", "[de]", "[START]", "[fr]", "[es]", "[it]", "[pt]", "[pl]", "[tr]", "[ru]", "[cs]", "[nl]",
          "[ar]", "[zh-cn]", "[ja]", "[hu]", "[ko]", "[hi]", "[start]", "[intro]", "[verse]", "[chorus]",
          "[bridge]", "[outro]", "[end]", "[inst]", "[solo]", "[hook]", "[pre-chorus]", "[break]"]
_BPE_SIZE = 259
_ALPHABET = list("!'(),-./:;?abcdefghijklmnopqrstuvwxyzßäöüœïêâÿèàëùîçæôûáéíóúñńśęążćãşğ")


@dataclass
class Args:
    workdir: Path = arg(Path("acetune_demo"), help="folder the demo writes everything into (cleared first if "
                                                   "an earlier demo made it)")
    steps: int | None = arg(None, help="training steps of the short run (default 30; 12 with --quick)")
    quick: bool = arg(False, help="smaller songs, fewer steps and shorter renders (CI)")
    seed: int = arg(0, help="seed of the model weights, songs and training")
    device: str = arg("cpu", help="device for preprocess, train and generate (the tiny model is fastest on cpu)")
    model_family: str = arg("ace-step-v1", choices=FAMILIES, help="which tiny model the demo trains: ACE-Step v1 "
                            "or ACE-Step 1.5 (diffusers AceStepPipeline layout)")
    sizes: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        if self.steps is None:
            self.steps = 12 if self.quick else 30
        if self.steps < 2:
            raise UsageError(f"--steps must be at least 2 (got {self.steps})")
        # quick: 6 transformer blocks instead of 20 (ERG on the transformer needs blocks 15..19, so it is
        # switched off with a warning there); everything else runs the same code.
        self.sizes = (dict(songs=3, seconds=(3.5, 3.0, 4.0), render=2.0, generate_steps=10, prompt_variants=2,
                           layers=6) if self.quick else
                      dict(songs=4, seconds=(5.0, 4.0, 6.0, 5.0), render=3.0, generate_steps=20, prompt_variants=4,
                           layers=20))


# ---- the tiny model set -----------------------------------------------------------------------

def write_tiny_lyric_vocab(path: Path, corpus: list[str]) -> int:
    """Train a small BPE lyric vocab in the real vocab's format and special ids; returns its size.

    The lyric code relies on [STOP]=0, [UNK]=1, [SPACE]=2, [START]=261 and bracketed language tags
    (`models/v1/lyrics/tokenizer.py`), so 259 BPE entries come first (padded with unused tokens if
    the corpus yields fewer merges), then the language and structure tags.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=_BPE_SIZE, special_tokens=_SPECIAL, initial_alphabet=_ALPHABET,
                                  limit_alphabet=len(_ALPHABET), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    filler = [f"<unused{i}>" for i in range(_BPE_SIZE - tok.get_vocab_size())]
    if filler:
        tok.add_tokens(filler)
    tok.add_special_tokens(_ADDED)
    assert tok.token_to_id("[START]") == 261 and tok.token_to_id("[SPACE]") == 2, "lyric vocab ids moved"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok.get_vocab_size()


def make_model_set(folder: Path, seed: int, layers: int = 20) -> Path:
    """The tiny checkpoint (official layout) with a lyric vocab trained on the demo's own words."""
    from acetune.dataset.demo_songs import SONGS
    from acetune.models.v1.tiny import save_tiny_checkpoint
    from acetune.preprocessing.samples import SPEAKER_DIM

    corpus = [s.lyrics for s in SONGS if s.lyrics] + [s.prompt for s in SONGS] + [_WORDS]
    vocab = folder.parent / "lyric_vocab.json"
    size = write_tiny_lyric_vocab(vocab, corpus)
    # speaker_embedding_dim as the release (512): preprocess stores the reference's 512-d speaker vector.
    # Width 128 (2 heads of 64) instead of the tiny default 32: the final layer maps each token's hidden
    # state to 8 channels x 16 rows = 128 outputs, so a narrower model cannot fit the songs at all.
    overrides = {"lyric_encoder_vocab_size": size, "speaker_embedding_dim": SPEAKER_DIM, "attention_head_dim": 64,
                 "num_layers": layers}
    save_tiny_checkpoint(folder, seed=seed, lyric_vocab=vocab, transformer_overrides=overrides)
    vocab.unlink()
    return folder


_WORDS = ("the quick brown fox jumps over the lazy dog while we sing about love and light in the night; "
          "hold my hand, feel the rhythm of the city, dancing under neon stars, running through the rain, "
          "every heart is beating louder, never stop believing, morning sun is rising over mountains and rivers, "
          "whisper softly, shout it loud, together forever, golden summer, winter winds, falling leaves, "
          "broken dreams, open roads, electric guitars, silver moonlight, thunder, ocean, fire, freedom")


# ---- running one stage ------------------------------------------------------------------------

class _Tee(io.TextIOBase):
    """stdout that also keeps a copy (the stage's summary goes to the screen and to its log)."""

    def __init__(self, real):
        self.real, self.buffer_ = real, io.StringIO()

    def write(self, s):
        self.real.write(s)
        self.buffer_.write(s)
        return len(s)

    def flush(self):
        self.real.flush()


@dataclass
class StageResult:
    name: str
    command: str
    code: int
    seconds: float
    output: str
    outputs: dict[str, str] = field(default_factory=dict)  # what -> path
    facts: dict[str, object] = field(default_factory=dict)


def run_stage(name: str, argv: list[str], logs: Path) -> StageResult:
    """Parse `argv` with the stage's own Args and call its `run` (what `acetune <name>` does)."""
    import importlib

    from acetune.cli import COMMANDS

    module = importlib.import_module(COMMANDS[name][0])
    command = "acetune " + name + " " + " ".join(_quote(a) for a in argv)
    print(f"\n=== {name} ===\n$ {command}", flush=True)
    args = parse_args(module.Args, argv, f"acetune {name}")
    tee = _Tee(sys.stdout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(tee):
        code = int(module.run(args) or 0)
    seconds = time.perf_counter() - start
    text = tee.buffer_.getvalue()
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{len(list(logs.iterdir())):02d}-{name}.log").write_text(f"$ {command}\n{text}", encoding="utf-8")
    return StageResult(name, command, code, seconds, text)


def _quote(a: str) -> str:
    return shlex.quote(a)


def fixed_noise_loss(train_argv: list[str], output_dir: Path, init_lora: str = "") -> float:
    """Mean denoising loss over every training song at 3 fixed timesteps with fixed noise (no update).

    Built by the train stage's own `build_run` (same model, LoRA config and data path); `init_lora`
    loads a trained LoRA, "" measures the untrained (zero) LoRA. Deterministic, unlike the per-step
    training loss, whose random timestep makes single values swing by 3x.
    """
    import torch

    from acetune.stages import train
    from acetune.training.data import batch_to, make_batch
    from acetune.training.loop import StepModule
    from acetune.training.setup import build_run

    argv = [*train_argv, "--output_dir", str(output_dir), "--logger", "none", "--max_steps", "1"]
    args = parse_args(train.Args, argv + (["--init_lora", init_lora] if init_lora else []), "acetune train")
    run_, _ = build_run(args, echo=lambda _: None)
    step = StepModule(run_.model, run_.family, run_.config.shift, ssl_coeff=0.0)
    run_.model.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        for i in range(len(run_.dataset)):
            batch = batch_to(make_batch([run_.dataset[i]], variant=0, lyric_cache=run_.lyric_cache),
                             run_.config.device, run_.config.compute_dtype)
            for u in (-1.0, 0.0, 1.0):  # logit-normal u: sigma about 0.5, 0.75 and 0.9 at shift 3
                noise = torch.randn(batch["target_latents"].shape, generator=gen).to(batch["target_latents"])
                losses.append(step(batch, noise=noise, u=torch.full((1,), u))["denoising_loss"].item())
    return sum(losses) / len(losses)


# ---- the pipeline -----------------------------------------------------------------------------

def prepare_workdir(workdir: Path) -> None:
    """Create `workdir`, or clear it if an earlier demo made it; never touch a folder the demo did not make."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise UsageError("--workdir exists and was not made by acetune demo", path=workdir,
                             fix="pass an empty or new folder with --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `acetune demo`; a rerun clears this folder\n", encoding="utf-8")


def run(args: Args) -> int:
    from acetune.dataset.demo_songs import SONGS, write_demo_songs
    from acetune.dataset.sidecars import sidecar_name
    from acetune.evaluation.tiny_clap import save_tiny_clap
    from acetune.training.best import read_best

    started = time.perf_counter()
    w = args.workdir
    prepare_workdir(w)
    logs = w / "logs"
    results: list[StageResult] = []
    print(f"acetune demo: writing into {w.resolve()} ({'quick' if args.quick else 'full'} size, "
          f"{args.steps} training steps, device {args.device})")

    # 1. tiny model set + songs (what a user downloads and records)
    t = time.perf_counter()
    v15 = args.model_family == "acestep15"
    if v15:
        from acetune.models.v15.tiny import save_tiny_checkpoint_v15

        ckpt = save_tiny_checkpoint_v15(w / CHECKPOINT_V15, seed=args.seed)
    else:
        ckpt = make_model_set(w / CHECKPOINT, args.seed, args.sizes["layers"])
    songs = write_demo_songs(w / "songs", count=args.sizes["songs"], seconds=args.sizes["seconds"], seed=args.seed)
    chosen = [next(s for s in SONGS if s.stem == p.stem) for p in songs]
    print(f"\n=== model set and songs ===\ntiny ACE-Step {'1.5' if v15 else 'v1'} checkpoint: {ckpt}\n"
          + "\n".join(f"song: {p}  ({s.prompt}{'; with lyrics' if s.lyrics else ''})" for p, s in zip(songs, chosen)))
    results.append(StageResult("model set + songs", "(generated)", 0, time.perf_counter() - t, "",
                               {"checkpoint": str(ckpt), "songs": str(w / "songs")}, {"songs": len(songs)}))

    def stage(name: str, argv: list[str]) -> StageResult:
        result = run_stage(name, argv, logs)
        results.append(result)
        return result

    filenames, prep, run_dir = w / "data" / "filenames", w / "data" / "prep", w / "runs" / "demo"
    r = stage("build-dataset", ["--data_dir", str(w / "songs"), "--output_name", str(filenames), "--strict"])
    r.outputs["dataset"] = str(filenames)
    _require(r, "build-dataset")

    r = stage("preprocess", ["--input_name", str(filenames), "--output_name", str(prep), "--checkpoint_dir", str(ckpt),
                             "--device", args.device, "--prompt_variants", str(args.sizes["prompt_variants"]),
                             "--num_workers", "0", "--strict", "--model_family", args.model_family])
    r.outputs["preprocessed"] = str(prep)
    _require(r, "preprocess")

    lora_config = w / "lora_config.json"
    lora_config.write_text(json.dumps(DEMO_LORA_CONFIG, indent=2), encoding="utf-8")
    common = ["--dataset_path", str(prep), "--checkpoint_dir", str(ckpt), "--lora_config_path", str(lora_config),
              "--precision", "32", "--device", args.device, "--seed", str(args.seed)]
    sung = next(s for s in chosen if s.lyrics)
    import importlib.util

    tb = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"  # installed by the [train] extra
    r = stage("train", [*common, "--output_dir", str(run_dir), "--exp_name", "demo", "--max_steps", str(args.steps),
                        "--logger", tb,
                        "--learning_rate", "5e-3", "--warmup_steps", "2", "--every_n_train_steps", str(args.steps),
                        "--save_last", "1", "--text_dropout", "0", "--lyrics_dropout", "0", "--speaker_dropout", "0",
                        "--validation_prompt", sung.prompt, "--validation_lyrics", sung.lyrics,
                        "--validation_duration", str(args.sizes["render"]),
                        "--validation_every", str(args.steps), "--validation_split", "0.25"])
    _require(r, "train")
    step_dir = run_dir / f"step-{args.steps:06d}"
    r.outputs.update(checkpoint=str(step_dir), validation=str(run_dir / "validation"), logs=str(run_dir / "logs"))
    r.facts["best"] = read_best(run_dir)
    t = time.perf_counter()
    before, after = (fixed_noise_loss(common, w / "runs" / "eval", lora) for lora in ("", str(step_dir)))
    r.seconds += time.perf_counter() - t
    r.facts["overfit_loss"] = [before, after]
    print(f"overfit: denoising loss on the {len(songs)} training songs (fixed noise, 3 timesteps each) "
          f"{before:.4f} before training -> {after:.4f} after {args.steps} steps ({before / after:.2f}x)")
    if not after < before:
        raise TrainingError(f"the demo's training did not lower the loss ({before:.4f} -> {after:.4f})",
                            path=run_dir, fix="report this with the demo's logs/ folder")

    exported = w / "demo_style_comfyui.safetensors"
    r = stage("export", ["--input_name", str(step_dir), "--output_name", str(exported), "--format", "comfyui",
                         "--bake_alpha"])
    r.outputs["lora"] = str(exported)
    _require(r, "export")

    song_out = w / "generated.wav"
    lyrics_file = w / "songs" / sidecar_name("fork", "lyrics", sung.stem)
    r = stage("generate", ["--checkpoint_dir", str(ckpt), "--prompt", sung.prompt, "--lyrics", str(lyrics_file),
                           "--duration", str(args.sizes["render"]), "--steps", str(args.sizes["generate_steps"]),
                           "--seed", str(args.seed), "--lora", f"{exported}:1.0", "--output", str(song_out),
                           "--device", args.device])
    r.outputs["audio"] = str(song_out)
    _require(r, "generate")

    # did it learn? held-out validation loss + CLAP scores on a tiny random CLAP (a real run: laion/clap-htsat-unfused)
    clap = save_tiny_clap(w / "clap-tiny", seed=args.seed)
    evaluation = run_dir / "evaluation"
    r = stage("evaluate", ["--run", str(run_dir), "--clap_model", str(clap), "--device", args.device,
                           "--output_dir", str(evaluation)])  # scores the validation renders: nothing to render
    r.outputs.update(report=str(evaluation / "report.md"), plots=str(evaluation / "plots"))
    _require(r, "evaluate")

    total = time.perf_counter() - started
    write_summary(w / SUMMARY_FILE, results, total, args)
    print_table(results, total)
    print("\n" + (evaluation / "report.md").read_text(encoding="utf-8").rstrip())
    return 0


def _require(result: StageResult, what: str) -> None:
    if result.code != 0:
        raise TrainingError(f"the demo stopped: {what} exited with code {result.code} (its output is above and "
                            "in the demo's logs/ folder)", fix="rerun with ACETUNE_DEBUG=1 and report the output")


def write_summary(path: Path, results: list[StageResult], total: float, args: Args) -> None:
    data = {"seconds": total, "steps": args.steps, "quick": args.quick,
            "stages": [{"name": r.name, "command": r.command, "code": r.code, "seconds": r.seconds,
                        "outputs": r.outputs, "facts": r.facts} for r in results]}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def print_table(results: list[StageResult], total: float) -> None:
    rows = []
    for r in results:
        note = ""
        loss = r.facts.get("overfit_loss")
        if loss:
            note = f"loss {loss[0]:.3f} -> {loss[1]:.3f}"
        elif "songs" in r.facts:
            note = f"{r.facts['songs']} songs"
        outputs = ", ".join(r.outputs.values())
        rows.append((r.name, f"{r.seconds:6.1f} s", "ok" if r.code == 0 else f"exit {r.code}", note, outputs))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print("\n=== acetune demo: done ===")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    print(f"total {total:.1f} s. Listen to the validation renders and generated.wav (noise-like: the model is "
          "tiny and random). Next: `acetune doctor --checkpoint_dir ACE-Step-v1-3.5B`, then docs/index.md.")
