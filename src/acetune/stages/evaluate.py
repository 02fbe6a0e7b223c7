"""Did the LoRA learn? Score every checkpoint of a run (or given LoRA files) and recommend one.

For each checkpoint: the held-out validation loss the trainer measured (`--validation_split`), and CLAP
scores of its renders (the training's validation renders when they match, otherwise fresh renders with the
same prompts and seeds): prompt adherence, style match to the training songs, Fréchet distance, and the
change against the same renders without the LoRA. `--strengths` renders one LoRA at several strengths and
shows where its effect saturates. Writes `<run>/evaluation/report.md` + PNG plots. See docs/evaluate.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from acetune.cli import arg
from acetune.errors import UsageError
from acetune.evaluation.clap import DEFAULT_CLAP, EFFECT_THRESHOLD

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  acetune evaluate --run checkpoints/mystyle
  acetune evaluate --run checkpoints/mystyle --strengths 0.5,0.75,1.0,1.25
  acetune evaluate --lora a.safetensors b.safetensors --checkpoint_dir ACE-Step-v1-3.5B \\
      --prompt "synthwave, female vocals" --reference_audio songs/
"""

REPORT_FILE = "report.md"
SCORES_FILE = "scores.json"


@dataclass
class Args:
    run: str = arg("", help="a training run folder (--output_dir of acetune train): scores each step-* checkpoint")
    lora: list[str] = arg(default_factory=list, help="LoRA files or checkpoint folders to score instead of --run")
    checkpoint_dir: str = arg("", help="the base model (default: the run's --checkpoint_dir)")
    prompt: list[str] = arg(default_factory=list, help="prompts to render (default: the run's --validation_prompt)")
    lyrics: list[str] = arg(default_factory=list, help="lyrics: one for all prompts or one per prompt")
    duration: float | None = arg(None, help="seconds per render (default: the run's --validation_duration, else 30)")
    seed: int | None = arg(None, help="prompt i renders with seed + i (default: the run's --validation_seed, else 42)")
    steps: int = arg(60, help="sampling steps of fresh renders")
    reference_audio: str = arg("", help="folder of the training songs (default: the source files of the run's "
                               "preprocessed dataset)")
    clap_model: str = arg(DEFAULT_CLAP, help="CLAP model: a Hub id or a folder saved with save_pretrained")
    strengths: str = arg("", help="comma-separated LoRA strengths to sweep with the recommended LoRA, e.g. "
                         "0.5,0.75,1.0,1.25 (empty: no sweep)")
    threshold: float = arg(EFFECT_THRESHOLD, help="warn when the LoRA changes style match by less than this")
    output_dir: str = arg("", help="report folder (default: <run>/evaluation, else ./evaluation)")
    device: str = arg("auto", help="device for rendering and CLAP (auto, cpu, cuda, ...)")
    strength_values: list[float] = field(init=False, default_factory=list)

    def __post_init__(self):
        if bool(self.run) == bool(self.lora):
            raise UsageError("give either --run FOLDER or --lora FILE ...")
        try:
            self.strength_values = [float(s) for s in self.strengths.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--strengths must be comma-separated numbers (got {self.strengths!r})") from None
        if any(s <= 0 for s in self.strength_values) or self.steps < 1:
            raise UsageError("--strengths must be > 0 and --steps >= 1")
        if not self.output_dir:
            self.output_dir = str(Path(self.run) / "evaluation") if self.run else "evaluation"


def _run_config(run_dir: Path) -> dict:
    from acetune.errors import InputError
    from acetune.training import checkpoint as ckpt

    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise InputError("no step-* checkpoint in the run folder", path=run_dir,
                         fix="pass the --output_dir of an acetune train run")
    return json.loads((found[-1][1] / ckpt.TRAIN_CONFIG_FILE).read_text(encoding="utf-8"))


def _spec(args: Args, config: dict):
    from acetune.evaluation.renders import RenderSpec

    prompts = args.prompt or list(config.get("validation_prompt") or [])
    if not prompts:
        raise UsageError("no prompts to render", fix="pass --prompt (the run had no --validation_prompt)")
    lyrics = args.lyrics if args.prompt else list(config.get("validation_lyrics") or [])
    lyrics = (lyrics * len(prompts)) if len(lyrics) == 1 else (lyrics or [""] * len(prompts))
    if len(lyrics) != len(prompts):
        raise UsageError(f"{len(lyrics)} --lyrics for {len(prompts)} --prompt; give one for all or one per prompt")
    checkpoint_dir = args.checkpoint_dir or config.get("checkpoint_dir")
    if not checkpoint_dir:
        raise UsageError("--checkpoint_dir is needed with --lora")
    duration = args.duration or float(config.get("validation_duration") or 30.0)
    seed = args.seed if args.seed is not None else int(config.get("validation_seed", 42))
    return RenderSpec(str(checkpoint_dir), prompts, lyrics, duration, seed, args.steps, args.device)


def run(args: Args) -> int:
    import torch

    from acetune.audio.io import decode
    from acetune.evaluation import report
    from acetune.evaluation.clap import ClapScorer, lora_effect_warning, reference_clips, score
    from acetune.evaluation.renders import render_set, training_song_paths, validation_renders
    from acetune.progress import progress
    from acetune.training import checkpoint as ckpt
    from acetune.training.best import read_best
    from acetune.training.loggers import merge_metrics, read_metrics
    from acetune.training.validation import validation_dir

    run_dir = Path(args.run) if args.run else None
    config = _run_config(run_dir) if run_dir else {}
    spec = _spec(args, config)
    out = Path(args.output_dir)
    renders_dir = out / "renders"
    if run_dir:
        targets = [(ckpt.checkpoint_name(s), s, p) for s, p in ckpt.list_checkpoints(run_dir)]
    else:
        targets = [(Path(p).stem if Path(p).is_file() else Path(p).name, None, Path(p)) for p in args.lora]
    val_loss = {r["step"]: r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r} if run_dir else {}
    best = read_best(run_dir) if run_dir else None

    reference_paths = training_song_paths(config.get("dataset_path"), args.reference_audio)  # fail before rendering

    # 1. renders: the training's validation renders when every set has them, else fresh ones
    reused = None
    if run_dir:
        reused = {s: validation_renders(validation_dir(run_dir, s), spec) for s in [0] + [t[1] for t in targets]}
        reused = reused if all(v is not None for v in reused.values()) else None
    print(f"acetune evaluate: {len(targets)} LoRA(s), {len(spec.prompts)} prompt(s), renders "
          + ("from the training's validation folders" if reused else f"fresh ({spec.steps} steps) in {renders_dir}"))
    base_wavs = reused[0] if reused else render_set(spec, None, 1.0, renders_dir / "base")
    sets = {label: (reused[step] if reused else render_set(spec, path, 1.0, renders_dir / label))
            for label, step, path in progress(targets, desc="render", unit="LoRA", **({"disable": True} if reused else {}))}

    # 2. CLAP
    scorer = ClapScorer(args.clap_model, device=("cuda" if torch.cuda.is_available() else "cpu")
                        if args.device == "auto" else args.device)
    reference = scorer.embed_audio(reference_clips(reference_paths))
    prompts = scorer.embed_text(spec.prompts)

    def scored(paths):
        return score(scorer.embed_audio([decode(p) for p in paths]), prompts, reference)

    base_scores = scored(base_wavs)
    base = report.Row("no LoRA", step=0 if run_dir else None, strength=0.0, val_loss=val_loss.get(0),
                      prompt=base_scores.prompt, style=base_scores.style, frechet=base_scores.frechet)
    rows, by_step = [], {0: base_scores.as_metrics()} if run_dir else {}
    for label, step, path in targets:
        s = scored(sets[label])
        rows.append(report.Row(label, step=step, val_loss=val_loss.get(step), prompt=s.prompt, style=s.style,
                               frechet=s.frechet, extra={"path": str(path)}))
        if step is not None:
            by_step[step] = s.as_metrics()
    pick, why = report.recommend(rows, base, (best or {}).get("step"))

    # 3. strength sweep of the recommended LoRA (fresh renders, its own no-LoRA set at the same settings)
    sweep, sweep_base, saturated = [], None, None
    if args.strength_values and pick is not None:
        lora_path = Path(pick.extra["path"])
        fresh_base = scored(render_set(spec, None, 1.0, renders_dir / "base"))
        sweep_base = report.Row("no LoRA (fresh)", strength=0.0, prompt=fresh_base.prompt, style=fresh_base.style)
        for strength in progress(args.strength_values, desc="strength sweep", unit="strength"):
            s = scored(render_set(spec, lora_path, strength, renders_dir / f"{pick.label}@{strength:g}"))
            sweep.append(report.Row(pick.label, step=pick.step, strength=strength, prompt=s.prompt, style=s.style,
                                    frechet=s.frechet))
        saturated = report.saturation(sweep, sweep_base)

    # 4. report, metrics, plots
    if run_dir and by_step:
        merge_metrics(run_dir, by_step)
    plots = report.plot_training(run_dir, out / "plots") if run_dir else []
    if sweep:
        plots += [p for p in [report.plot_strengths(sweep, sweep_base, out / "plots" / "strengths.png")] if p]
    warning = lora_effect_warning(_as_scores(pick), base_scores, args.threshold) if pick else None
    lines = _report_lines(rows, base, pick, why, sweep, sweep_base, saturated, warning, plots, best)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / SCORES_FILE).write_text(json.dumps({"base": vars(base), "checkpoints": [vars(r) for r in rows],
                                               "sweep": [vars(r) for r in sweep],
                                               "recommended": pick.label if pick else None}, indent=1, default=str),
                                   encoding="utf-8")
    print("\n".join(lines))
    print(f"\nreport: {out / REPORT_FILE}")
    return 0


def _as_scores(row):
    from acetune.evaluation.clap import Scores

    return Scores(row.prompt, row.style, row.frechet)


def _report_lines(rows, base, pick, why, sweep, sweep_base, saturated, warning, plots, best) -> list[str]:
    from acetune.evaluation import report

    lines = ["# acetune evaluation", "", report.markdown_table(rows, base), ""]
    if best and best.get("step") is None and best.get("step0_val_loss") is not None:
        lines += ["No checkpoint reached a lower validation loss than step 0 (before training).", ""]
    lines.append(f"**Recommended: {pick.label}** ({why})." if pick else "No checkpoint could be recommended.")
    if warning:
        lines += ["", f"Warning: {warning}."]
    if sweep:
        lines += ["", "## Strength sweep", "", report.markdown_table(sweep, sweep_base), ""]
        lines.append(f"The effect saturates at strength {saturated.strength:g} (first strength reaching "
                     f"{report.SATURATION:.0%} of the largest style gain)." if saturated else
                     "No strength raised style match above the no-LoRA renders.")
    if plots:
        lines += ["", "Plots: " + ", ".join(str(p) for p in plots)]
    else:
        lines += ["", "No plots (install matplotlib: pip install 'acetune[train]')."]
    return lines
