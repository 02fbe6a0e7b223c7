"""Train a LoRA on the transformer from a preprocessed dataset (`acetune preprocess` output).

Accepts the woct0rdho fork's `trainer_new.py` flags (and the upstream `trainer.py` ones that still
mean something); see docs/train.md for every flag and the migration table. Checkpoints go to
`--output_dir/step-NNNNNN/` (LoRA in the ComfyUI-loadable peft layout + everything a resume needs);
`--resume` continues from the newest one exactly.

Several GPUs: `accelerate launch --config_file config/accelerate_ddp.yaml -m acetune train ...` (DDP, LoRA) or
`config/accelerate_fsdp.yaml` with `--full` (FSDP, `training/sharding.py`).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from acetune import cli, stopping
from acetune.cli import arg
from acetune.errors import TrainingError, UsageError
from acetune.training.recipes import RECIPES
from acetune.training.setup import DEFAULT_LORA_CONFIG, PRECISIONS, build_run

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  acetune train --dataset_path data/prep --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B --max_steps 2000
  # the fork's command line works as is:
  python trainer_new.py --dataset_path data/prep --checkpoint_dir ckpt --lora_config_path config/lora_config.json \\
      --learning_rate 1e-4 --max_steps 5000 --every_n_train_steps 500 --exp_name mystyle
  # continue a killed run exactly where its last checkpoint left it:
  acetune train --config run.yaml --resume
  # does this dataset + model learn at all? (one song, loss must fall 10x)
  acetune train --dataset_path data/prep --checkpoint_dir ckpt --overfit_check
  # 12 GB GPU: int8 base weights
  acetune train --dataset_path data/prep --checkpoint_dir ckpt --int8
  # train as the woct0rdho fork does (no condition dropout, bf16 LoRA, one prompt per song, ...)
  acetune train --dataset_path data/prep --checkpoint_dir ckpt --recipe fork
  # full fine-tune sharded over 8 GPUs (FSDP), then a LoRA of it:
  accelerate launch --config_file config/accelerate_fsdp.yaml -m acetune train --full --dataset_path data/prep \
      --checkpoint_dir ckpt --output_dir checkpoints/full
  acetune export --extract_lora --base ckpt --tuned checkpoints/full/transformer --energy 0.9
"""


@dataclass
class Args:
    dataset_path: str = arg(help="preprocessed dataset folder (`acetune preprocess --output_dir`)")
    checkpoint_dir: str = arg(help="ACE-Step checkpoint folder (ace_step_transformer/, music_dcae_f8c8/, ...) or a "
                                   "Hub repo id / short name (only the transformer is fetched unless validating)")
    revision: str = arg("", help="Hub branch, tag or commit of a --checkpoint_dir repo id (default: main)")
    offline: bool = arg(False, help="use only the HF cache, never the network (also: HF_HUB_OFFLINE=1)")
    lora_config_path: str = arg(DEFAULT_LORA_CONFIG, help="peft LoraConfig JSON (r, lora_alpha, target_modules, "
                                "use_rslora); add linear_q/linear_k/linear_v to adapt the lyric encoder too")
    adapter: str = arg("lora", choices=("lora", "lokr"), help="adapter kind; lokr (peft LoKr, ACE-Step 1.5 only) "
                       "reads r, alpha (or lora_alpha), target_modules and LoKr fields from --lora_config_path")
    dora: bool = arg(False, help="DoRA (peft use_dora): also learn a per-output magnitude; export for ComfyUI "
                     "then needs --checkpoint_dir (see docs/export.md)")
    output_dir: str = arg("", help="where step-NNNNNN/ checkpoints and logs go (default: checkpoints/<exp_name>)")
    exp_name: str = arg("acetune_lora", help="run name (wandb run, default output folder)")
    recipe: str = arg("acetune", choices=tuple(RECIPES), help="named set of flag values, applied first; flags you "
                      "set win. fork: as woct0rdho's trainer_new.py, upstream: as ace-step's trainer.py (docs/train.md)")
    model_family: str = arg("", help="model family (ace-step-v1, acestep15); optional: read from --checkpoint_dir, "
                            "and checked against it when given", aliases=("--family",))
    # optimisation
    learning_rate: float = arg(1e-4, help="peak learning rate (Prodigy: a multiplier, usually 1.0)")
    weight_decay: float = arg(1e-2, help="decoupled weight decay")
    optimizer: str = arg("adamw", choices=("adamw", "adamw8bit", "prodigy", "adafactor"), help="AdamW (betas 0.8, "
                         "0.9 as the fork); adamw8bit: the same with 8-bit moments (bitsandbytes, 1/4 of the state "
                         "memory; docs/train.md Memory); Prodigy; or Adafactor (factored second moments: the "
                         "small-memory choice for --full)")
    max_steps: int = arg(10000, help="optimizer steps to train (the LR reaches its floor here)")
    epochs: int = arg(-1, help="stop after this many passes over the data (-1: only --max_steps)")
    warmup_steps: int = arg(10, help="linear LR warmup, in optimizer steps")
    accumulate_grad_batches: int = arg(1, help="micro-batches per optimizer step")
    gradient_clip_val: float = arg(1.0, help="clip the gradient norm to this (0: off)")
    gradient_clip_algorithm: str = arg("norm", choices=("norm",), help="only norm clipping (the fork's default)")
    batch_size: int = arg(1, help="samples per micro-batch (per process)")
    num_workers: int = arg(0, help="DataLoader worker processes")
    seed: int = arg(42, help="seed of everything (LoRA init, noise, timesteps, data order, dropout)")
    # the objective
    shift: float = arg(3.0, help="flow-matching schedule shift")
    ssl_coeff: float = arg(1.0, help="weight of the SSL (MERT/mHuBERT) projection losses; 0 drops the projectors")
    text_dropout: float = arg(0.15, help="probability of training without the prompt (upstream trainer.py)")
    speaker_dropout: float = arg(0.5, help="probability of training without the speaker embedding")
    lyrics_dropout: float = arg(0.15, help="probability of training without the lyrics")
    timestep_sampling: str = arg("auto", choices=("auto", "discrete", "logit_normal"), help="ACE-Step 1.5: how t "
                                 "is drawn. auto: from the checkpoint variant (turbo: discrete, the 8 turbo "
                                 "timesteps; base/sft: logit_normal, the official corrected trainer training_v2)")
    cfg_dropout: float | None = arg(None, help="ACE-Step 1.5: probability of replacing a song's whole condition "
                                    "with the checkpoint's null embedding (CFG training). Default from the "
                                    "variant: turbo 0, base/sft 0.15 (training_v2). 1.5 ignores the three "
                                    "v1 dropouts above")
    prompt_draw: str = arg("per_step", choices=("per_step", "once"), help="per_step: a stored prompt variant drawn "
                           "every step (upstream); once: one variant per song for the whole run (the fork bakes one)")
    # model
    precision: str = arg("bf16-mixed", choices=tuple(PRECISIONS), help="bf16-mixed: bf16 base weights, fp32 LoRA, "
                         "bf16 autocast; bf16: LoRA in bf16 too; 32: everything fp32")
    int8: bool = arg(False, help="int8 base weights of the transformer's linear layers (optimum-quanto)")
    gradient_checkpointing: str = arg("auto", choices=("auto", "on", "fine", "off"), switch=("on", "off"),
                                      help="recompute blocks in the backward pass (much less memory, more compute). "
                                      "on: every block; fine: every block and, inside its recompute, its attention, "
                                      "cross-attention and feed-forward one at a time (v1; least memory, one more "
                                      "forward of most of each block, same numbers); off: none; auto: as few as "
                                      "--memory_budget_gb needs (every block without a budget, fine when even that "
                                      "does not fit). true/false mean on/off")
    memory_budget_gb: float = arg(0.0, help="with --gradient_checkpointing auto: the device memory to fit (e.g. 24 "
                                  "for a 24 GB GPU); only as many blocks are checkpointed as the estimated peak "
                                  "at the longest song needs (0: no budget)")
    optimizer_offload: bool = arg(False, help="keep the optimizer state (and the step) in host RAM instead of on the "
                                  "GPU: less GPU memory, same numbers; a no-op on --device cpu")
    activation_offload: bool = arg(False, help="keep the inputs each checkpointed block saves for its backward in "
                                   "host RAM until the backward needs them (0.48 GB less GPU memory on the official "
                                   "v1 config at 360 s, same numbers, a copy to the host and back per block and "
                                   "step); a no-op on --device cpu")
    compile: bool = arg(False, help="ACE-Step v1: torch.compile the transformer blocks (faster steps once compiled; the first "
                        "steps compile, and again at a new audio length; needs a C++ compiler on CPU)")
    train_lyrics_embedder: bool = arg(False, help="also train the lyric embedding, Conformer and projection fully")
    init_lora: str = arg("", help="start from this LoRA (.safetensors or a checkpoint folder; any key style)")
    full: bool = arg(False, help="full fine-tune: train the transformer's own weights instead of a LoRA (all of "
                     "them, or those matching --trainable); checkpoints hold the trained tensors and the run ends "
                     "with a complete transformer folder in <output_dir>/transformer")
    trainable: list[str] = arg(default_factory=list, help="with --full: parameter or module name patterns to train "
                               "(fnmatch, e.g. 'transformer_blocks.*.attn'); default: every weight")
    cache_lyrics: bool = arg(True, help="encode each song's lyrics once (when no trainable weight is in the lyric "
                             "encoder) instead of every step; the cached output has no Conformer dropout")
    device: str = arg("auto", help="auto, cpu, cuda, cuda:1 ... (under accelerate launch: set by the launcher)")
    # checkpoints, logs
    every_n_train_steps: int = arg(100, help="save a checkpoint every N optimizer steps (and at the end)")
    save_last: int = arg(5, help="keep the newest N checkpoints (0: keep all)")
    resume: bool = arg(False, help="continue from the newest checkpoint in --output_dir (exactly)")
    overwrite: bool = arg(False, help="start a new run in an --output_dir that holds another run's checkpoints: "
                          "delete them (and its logs/, validation/, metrics.jsonl) first")
    allow_changes: bool = arg(False, help="let --resume change hyper-parameters (learning rate, batch size, LoRA "
                              "config, ...); the changes are listed. Without it such a resume is refused")
    resume_from: str = arg("", help="continue from this step-NNNNNN folder", aliases=("--ckpt_path",))
    logger: str = arg("tensorboard", choices=("tensorboard", "wandb", "none"), help="metrics logger "
                      "(wandb honours WANDB_MODE=offline)")
    logger_dir: str = arg("", help="log folder (default: <output_dir>/logs)")
    overfit_check: bool = arg(False, help="instead of training: fit the first song with fixed noise and report "
                              "whether the loss falls 10x (within 300 steps)")
    # validation renders
    validation_prompt: list[str] = arg(default_factory=list, help="caption(s) to render during training")
    validation_lyrics: list[str] = arg(default_factory=list, help="lyrics: one for all prompts or one per prompt")
    validation_duration: float = arg(30.0, help="seconds per validation render")
    validation_every: int = arg(0, help="render every N steps (0: only at step 0); the validation loss is measured "
                                "every N steps too (0: at every checkpoint save), and at step 0 and the last step")
    validation_split: float = arg(0.0, help="hold this fraction of the songs out of training (e.g. 0.1; whole songs, "
                                  "chosen by --seed) and measure the validation loss on them; the best checkpoint "
                                  "by that loss is kept even when older ones rotate out")
    validation_dataset: str = arg("", help="a preprocessed dataset of other songs to measure the validation loss on "
                                  "(instead of --validation_split)")
    validation_seed: int = arg(42, help="prompt i renders with seed + i")
    # accepted for command-line compatibility with the reference trainers; no effect
    every_plot_step: int = arg(0, help="ignored (upstream plots; use --validation_prompt)")
    val_check_interval: int | None = arg(None, help="ignored (the fork has no validation loader)")
    devices: int = arg(1, help="ignored: use `accelerate launch --num_processes N`")
    num_nodes: int = arg(1, help="ignored: use `accelerate launch`")
    reload_dataloaders_every_n_epochs: int = arg(0, help="ignored")
    # flags the user set (command line or --config), filled by the CLI; `--recipe` leaves these alone
    given_flags: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        problems = []
        for name in ("max_steps", "accumulate_grad_batches", "batch_size", "every_n_train_steps"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be >= 1")
        for name in ("warmup_steps", "num_workers", "save_last", "validation_every"):
            if getattr(self, name) < 0:
                problems.append(f"--{name} must be >= 0")
        if self.epochs == 0 or self.epochs < -1:
            problems.append("--epochs must be >= 1, or -1 for no limit")
        for name in ("text_dropout", "speaker_dropout", "lyrics_dropout", "cfg_dropout"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"--{name} must be in [0, 1]")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append("--learning_rate must be > 0")
        if self.gradient_clip_val < 0 or self.ssl_coeff < 0:
            problems.append("--gradient_clip_val and --ssl_coeff must be >= 0")
        if self.resume and self.resume_from:
            problems.append("--resume and --resume_from both given; choose one")
        if not 0.0 <= self.validation_split < 1.0:
            problems.append(f"--validation_split must be in [0, 1) (got {self.validation_split})")
        if self.validation_split and self.validation_dataset:
            problems.append("--validation_split and --validation_dataset both given; choose one")
        if self.dora and (self.adapter != "lora" or self.int8 or self.init_lora):
            problems.append("--dora works with --adapter lora only, without --int8 and --init_lora")
        if self.memory_budget_gb < 0:
            problems.append("--memory_budget_gb must be >= 0")
        if self.memory_budget_gb and self.gradient_checkpointing != "auto":
            problems.append(f"--memory_budget_gb needs --gradient_checkpointing auto (got {self.gradient_checkpointing})")
        if self.compile and self.gradient_checkpointing == "fine":
            problems.append("--compile with --gradient_checkpointing fine is not supported; choose one")
        if self.trainable and not self.full:
            problems.append("--trainable selects weights for --full; add --full, or drop --trainable for a LoRA")
        if self.full:
            clashes = [f for f, on in (("--int8", self.int8), ("--init_lora", bool(self.init_lora)),
                                       ("--adapter lokr", self.adapter != "lora"),
                                       ("--train_lyrics_embedder", self.train_lyrics_embedder)) if on]
            if clashes:
                problems.append(f"--full trains the weights themselves; drop {', '.join(clashes)}")
        if self.validation_lyrics and not self.validation_prompt:
            problems.append("--validation_lyrics needs --validation_prompt")
        if problems:
            raise UsageError("; ".join(problems))
        if not self.output_dir:
            self.output_dir = str(Path("checkpoints") / self.exp_name)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------



def _recipe_line(recipe: dict) -> str:
    """The 1.5 recipe in the header: `recipe: logit_normal t (mu -0.4, sigma 1.0), cfg dropout 0.15 (sft checkpoint)`."""
    t = ("discrete t (the 8 turbo timesteps)" if recipe["timestep_sampling"] == "discrete"
         else f"logit_normal t (mu {recipe['mu']}, sigma {recipe['sigma']})")
    return f"  recipe: {t}, cfg dropout {recipe['cfg_dropout']:g} ({recipe['variant']} checkpoint)"


def header(run, freed: dict[str, int], args: Args) -> list[str]:
    """The opening block: what is trained on what, and the numbers that decide time and memory."""
    from acetune.training.full import describe as describe_full

    trainable = sum(p.numel() for p in run.setup.params)
    resident = sum(p.numel() for p in run.model.parameters())
    cfg = run.config
    world = run.accelerator.num_processes
    lines = [
        "***** acetune train *****",
        f"  family {run.family.name}, {len(run.dataset)} samples, SSL: {', '.join(run.dataset.ssl_names) or 'off'}",
        f"  steps {cfg.max_steps}, batch {cfg.batch_size} x {cfg.accumulate_grad_batches} accumulation x "
        f"{world} process(es), lr {args.learning_rate} ({args.optimizer}, warmup {args.warmup_steps})",
        describe_full(run.setup, resident) if args.full else
        f"  {'LoKr' if args.adapter == 'lokr' else 'LoRA'} r {run.setup.config['r']}, "
        f"alpha {run.setup.config.get('lora_alpha', run.setup.config.get('alpha', 8))}, "
        f"{'rsLoRA, ' if run.setup.config.get('use_rslora') else ''}targets {', '.join(run.setup.config['target_modules'])}"
        f": {trainable:,} trainable of {resident:,} resident parameters",
        f"  recipe {args.recipe}, precision {args.precision}{', int8 base weights' if args.int8 else ''}, device {run.config.device}"
        f", lyrics cached: {'yes' if run.lyric_cache is not None else 'no'}",
        "  freed: " + (", ".join(f"{k} {v:,} params" for k, v in freed.items()) or "nothing"),
        *([_recipe_line(run.train_config["v15_recipe"])] if "v15_recipe" in run.train_config else []),
        *run.summary,
        f"  checkpoints: {cfg.output_dir} every {cfg.every_n_train_steps} steps, keep {cfg.save_last or 'all'}"
        + (" + the best by validation loss" if cfg.val_loss else ""),
    ]
    if cfg.val_loss:
        lines.append(f"  validation loss: {len(cfg.val_loss.dataset)} held-out sample(s) x "
                     f"{len(cfg.val_loss.quantiles)} timesteps, every {cfg.val_loss.every or cfg.every_n_train_steps} steps")
    return lines


def run(args: Args) -> int:
    from acetune.evaluation.report import plot_training
    from acetune.training import checkpoint as ckpt
    from acetune.training.loop import fit, overfit_check
    from acetune.training.val_loss import best_lines

    run_, freed = build_run(args)
    echo = run_.echo
    for line in header(run_, freed, args):
        echo(line)
    if args.overfit_check:
        result = overfit_check(run_)
        verdict = "PASSED" if result["passed"] else "FAILED"
        echo(f"overfit check {verdict}: denoising loss {result['first']:.4f} -> {result['last']:.4f} "
             f"({result['ratio']:.1f}x) in {result['steps']} steps")
        return 0 if result["passed"] else 1
    try:
        with stopping.graceful_stop():
            summary = fit(run_)
    except KeyboardInterrupt:  # a second Ctrl-C: saves are atomic, so the newest checkpoint is whole
        newest = ckpt.find_latest_checkpoint(args.output_dir)
        print(f"Aborted: nothing after {newest or 'the start'} was saved; continue with: "
              f"{resume_command(args) if newest else stopping.command_line(cli.invocation())}", file=sys.stderr)
        return stopping.exit_code()
    finally:
        run_.metrics.close()
    first = "-" if summary["first_loss"] is None else f"{summary['first_loss']:.4f}"
    last = "-" if summary["last_loss"] is None else f"{summary['last_loss']:.4f}"
    echo(f"{'stopped' if summary['stopped'] else 'done'}: step {summary['steps']} ({summary['steps_this_run']} this run, {summary['seconds']:.1f} s, "
         f"{summary['seconds_per_step']:.3f} s/step), loss {first} -> {last}, "
         f"processes {summary['processes']}, replicas in sync: {'yes' if summary['replicas_in_sync'] else 'NO'}")
    echo(f"last checkpoint: {summary['checkpoint']}")
    for line in best_lines(summary.get("best"), args.output_dir):
        echo(line)
    if run_.accelerator.is_main_process:  # for users without W&B: the curves as PNG files
        plots = plot_training(args.output_dir)
        echo("plots: " + ", ".join(map(str, plots)) if plots else "plots: none (matplotlib missing)")
    if summary["stopped"] and run_.accelerator.is_main_process:  # last, so the next command is what one sees
        print(f"Stopped by {stopping.signal_name()} after step {summary['steps']}: saved {summary['checkpoint']}; "
              f"continue with: {resume_command(args)}", file=sys.stderr, flush=True)
    if not summary["replicas_in_sync"]:
        raise TrainingError("the processes ended with different LoRA weights", fix="report this with the command line")
    if args.full and not summary["stopped"]:
        from acetune.training.full import write_final_model

        write_final_model(run_, Path(args.output_dir), PRECISIONS[args.precision][0])  # FSDP: every rank gathers
    return stopping.exit_code() if summary["stopped"] else 0


def resume_command(args: Args) -> str:
    """This run's command line, changed to continue from the newest checkpoint in --output_dir."""
    out, skip, dropped = [], False, False
    for word in cli.invocation():
        name = word.split("=", 1)[0]
        if skip:
            skip = False
        elif name in ("--resume_from", "--resume-from", "--ckpt_path"):
            skip, dropped = "=" not in word, True
        elif name not in ("--resume", "--no-resume", "--overwrite", "--no-overwrite"):
            out.append(word)
    if args.resume_from and not dropped:  # it came from --config: blank it
        out += ["--resume_from", ""]
    if args.overwrite:  # from --config (the flag itself was dropped above)
        out.append("--no-overwrite")
    return stopping.command_line([*out, "--resume"])
