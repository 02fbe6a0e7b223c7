"""Build a training run from the train flags: model + adapter (or `--full`), dataset, caches, optimizer,
schedule, logger, validation. `stages/train.py` parses the flags and calls `build_run`; the loop
(`training/loop.py`) runs what this returns.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from acetune.errors import TrainingError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_LORA_CONFIG = "config/lora_config_transformer_only.json"
# Used when DEFAULT_LORA_CONFIG is not found relative to the working directory (pip installs):
# the same content as that file.
BUILTIN_LORA_CONFIG = {"r": 64, "lora_alpha": 1, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
PRECISIONS = {  # flag -> (compute dtype, LoRA dtype, autocast)
    "bf16-mixed": (torch.bfloat16, torch.float32, True),
    "bf16": (torch.bfloat16, torch.bfloat16, True),
    "bf16-true": (torch.bfloat16, torch.bfloat16, True),
    "32": (torch.float32, torch.float32, False),
    "32-true": (torch.float32, torch.float32, False),
    "fp32": (torch.float32, torch.float32, False),
}



def _device(args, accelerator) -> torch.device:
    device = accelerator.device if accelerator.num_processes > 1 or args.device == "auto" else torch.device(args.device)
    return torch.device("cpu") if device.type == "cpu" else device  # accelerate says "cpu:0" under DDP


def _lora_config(args) -> dict:
    from acetune.training.lora import load_lora_config

    path = Path(args.lora_config_path)
    if not path.is_file() and args.lora_config_path == DEFAULT_LORA_CONFIG:
        logger.info("%s not found here; using the built-in transformer-only config", path)
        return dict(BUILTIN_LORA_CONFIG)
    return load_lora_config(path, kind=args.adapter)


def check_dataset(meta, family, checkpoint_dir: Path, dataset_path: str) -> None:
    """Refuse a dataset preprocessed for another model family or another checkpoint (one line naming both)."""
    if meta.family != family.name:
        raise TrainingError(f"dataset was preprocessed for {meta.family}, the checkpoint is {family.name}",
                            path=dataset_path, fix="preprocess the songs with this checkpoint")
    if meta.checkpoint and hasattr(family, "checkpoint_mismatch"):  # 1.5: name, variant, widths, weights
        mismatch = family.checkpoint_mismatch(meta.checkpoint, checkpoint_dir)
        if mismatch:
            raise TrainingError(f"dataset was preprocessed with {mismatch}", path=dataset_path,
                                fix="preprocess the songs again with this --checkpoint_dir")
    expected = family.config_hash(checkpoint_dir)
    if meta.checkpoint_hash != expected:
        raise TrainingError(f"dataset was preprocessed for transformer config {meta.checkpoint_hash}, this "
                            f"checkpoint is {expected}", path=dataset_path,
                            fix="preprocess the songs again with this --checkpoint_dir")


def build_run(args, echo=print):
    """Load everything `fit` needs: model + LoRA, dataset, caches, optimizer, schedule, logger."""
    from accelerate import Accelerator

    from acetune.dataset.schema import load_dataset
    from acetune.hub import resolve_model
    from acetune.models.family import check_family, detect_family, get_family
    from acetune.training import checkpoint as ckpt
    from acetune.training import run_folder
    from acetune.training.best import forget_best_after
    from acetune.training.data import ConditionDropout, LyricCache, SongDataset
    from acetune.training.loggers import JsonlLogger, MetricsLogger, TeeLogger, build_logger
    from acetune.training.loop import LoopConfig, TrainRun
    from acetune.training.lora import add_lora, init_lora_from_file, touches_lyric_encoder
    from acetune.training.memory import plan_checkpointing
    from acetune.training.optim import build_lr_scheduler, build_optimizer, optimizer_advice
    from acetune.training.quantize import quantize_block_int8, quantize_int8
    from acetune.training.recipes import apply_recipe
    from acetune.training.resume import seed_everything
    from acetune.training.val_loss import held_out_songs

    source = resolve_model(args.checkpoint_dir, stage="all" if args.validation_prompt else "train",
                           revision=args.revision or None, offline=args.offline)
    checkpoint_dir = source.path
    if args.model_family:
        check_family(checkpoint_dir, get_family(args.model_family))
    family = detect_family(checkpoint_dir)
    apply_recipe(args, family.name)  # before anything reads a flag the recipe sets
    hf_dataset, meta = load_dataset(args.dataset_path)
    check_dataset(meta, family, checkpoint_dir, args.dataset_path)
    lora_config = _lora_config(args)
    recipe = None
    if hasattr(family, "training_recipe"):  # ACE-Step 1.5: t sampling and CFG dropout per checkpoint variant
        recipe = family.training_recipe(checkpoint_dir, args.timestep_sampling, args.cfg_dropout)
    elif args.timestep_sampling != "auto" or args.cfg_dropout is not None:
        raise UsageError(f"--timestep_sampling and --cfg_dropout are ACE-Step 1.5 settings; {family.name} samples "
                         "logit-normal t with --shift", fix="drop them (v1 uses --shift and --text_dropout)")
    if args.dora:
        lora_config["use_dora"] = True
    compute_dtype, lora_dtype, autocast = PRECISIONS[args.precision]

    accelerator = Accelerator(cpu=args.device == "cpu")
    device = _device(args, accelerator)
    from acetune.training.sharding import check_fsdp_run

    fsdp = check_fsdp_run(args, accelerator)  # before anything is loaded: a refused setup fails fast
    output_dir = Path(args.output_dir)
    if not args.overfit_check:  # the check writes nothing
        for path in run_folder.claim(output_dir, resuming=args.resume or bool(args.resume_from),
                                     overwrite=args.overwrite, logs_inside=not args.logger_dir,
                                     delete=accelerator.is_main_process):
            echo(f"--overwrite: deleted {path}")
    seed_everything(args.seed)
    int8_load = args.int8 and getattr(family, "loads_by_block", False)  # quantized while read: a lower load peak
    model = family.load_transformer(checkpoint_dir, dtype=compute_dtype, device=device, drop_unused=True,
                                    **({"on_block": quantize_block_int8} if int8_load else {}))
    if recipe is not None:
        family.set_recipe(model, recipe)
    use_ssl = bool(meta.ssl_names) and args.ssl_coeff > 0
    if args.int8 and not int8_load:
        getattr(family, "quantize_int8", quantize_int8)(model)
    if args.full:
        from acetune.training.full import setup_full

        setup = setup_full(model, args.trainable, master_dtype=lora_dtype)
    elif hasattr(family, "add_training_adapter"):  # LoRA / LoKr keyed by the family's module paths (ACE-Step 1.5)
        setup = family.add_training_adapter(model, lora_config, kind=args.adapter, lora_dtype=lora_dtype)
    elif args.adapter != "lora":
        raise UsageError(f"--adapter {args.adapter} is not available for {family.name}", fix="use --adapter lora")
    else:
        setup = add_lora(model, lora_config, train_lyrics_embedder=args.train_lyrics_embedder, lora_dtype=lora_dtype)
    if args.init_lora:
        count = (setup.init_from_file(model, args.init_lora) if hasattr(setup, "init_from_file")
                 else init_lora_from_file(model, args.init_lora, setup))
        echo(f"initialised {count} LoRA modules from {args.init_lora}")
    model.train()

    hf_dataset, val_loss = held_out_songs(
        hf_dataset, meta, split=args.validation_split, dataset_path=args.validation_dataset,
        every=args.validation_every, seed=args.validation_seed, save_every=args.every_n_train_steps,
        check=lambda other, path: check_dataset(other, family, checkpoint_dir, path))
    dataset = SongDataset(hf_dataset, meta, use_ssl=use_ssl, prompt_draw=args.prompt_draw, seed=args.seed)
    validation = None
    if args.validation_prompt:
        from acetune.training.validation import ValidationSpec

        validation = ValidationSpec(prompts=args.validation_prompt, lyrics=(args.validation_lyrics[0] if len(
            args.validation_lyrics) == 1 else args.validation_lyrics or ""), duration=args.validation_duration,
            seed=args.validation_seed, every=args.validation_every)
    cache = None
    if args.cache_lyrics and hasattr(model, "encode_lyrics") and not touches_lyric_encoder(model) and not args.full:
        cache = LyricCache()
        cache.fill(model, (dataset[i] for i in range(len(dataset))), device, compute_dtype)
        if val_loss is not None:
            val_loss.lyric_cache = LyricCache()
            val_loss.lyric_cache.fill(model, (val_loss.dataset[i] for i in range(len(val_loss.dataset))), device,
                                      compute_dtype)
    freed = family.prepare_for_training(model, use_ssl=use_ssl, drop_lyric_path=cache is not None and validation is None)
    if args.full:  # the freed modules' weights are not trained (nor saved)
        setup = setup.present_in(model)
    if getattr(args, "compile", False):
        from acetune.training.compiled import compile_blocks

        echo(f"--compile: {compile_blocks(model)} transformer blocks compile during the first steps")

    _, memory_lines = plan_checkpointing(args, model, setup, hf_dataset, lora_config=lora_config, use_ssl=use_ssl,
                                         device=device, processes=accelerator.num_processes)
    if fsdp:  # after the unused modules are freed, before the optimizer sees the (now sharded) parameters
        from acetune.training.sharding import shard

        setup = shard(model, setup, device)
    optimizer = build_optimizer(setup.params, args.optimizer, lr=args.learning_rate, weight_decay=args.weight_decay,
                                offload=args.optimizer_offload)
    for tip in optimizer_advice(args.optimizer, args.learning_rate, args.warmup_steps):
        logger.warning(tip)
    scheduler = build_lr_scheduler(optimizer, args.warmup_steps, args.max_steps, optimizer_name=args.optimizer)

    resume_from = None
    if args.resume_from:
        resume_from = Path(args.resume_from)
    elif args.resume:
        resume_from = ckpt.find_latest_checkpoint(output_dir)
        if resume_from is None:
            echo(f"--resume: no checkpoint in {output_dir} yet; starting from step 0")
    metrics = MetricsLogger()
    train_config = {**asdict(args), "family": family.name, "dataset_hash": meta.checkpoint_hash,
                    "checkpoint_source": source.record(), "processes": accelerator.num_processes,
                    # 1.5: the resolved recipe (a resume that changes it is a hyper-parameter change)
                    **({"v15_recipe": {**asdict(recipe), "variant": family.variant_of(checkpoint_dir)}}
                       if recipe is not None else {})}
    if resume_from is not None:
        for change in run_folder.check_resume(resume_from, train_config, setup.config, allow=args.allow_changes):
            echo(f"--allow_changes: {change}")
    if accelerator.is_main_process and not args.overfit_check:
        resume_step = ckpt.checkpoint_step(resume_from) if resume_from is not None else None
        forget_best_after(output_dir, resume_step)
        metrics = TeeLogger(JsonlLogger(output_dir, resume_step=resume_step),
                            build_logger(args.logger, args.logger_dir or output_dir / "logs", run_name=args.exp_name,
                                         config=train_config))
    loop_config = LoopConfig(
        output_dir=output_dir, max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size,
        num_workers=args.num_workers, accumulate_grad_batches=args.accumulate_grad_batches,
        gradient_clip_val=args.gradient_clip_val, shift=args.shift, ssl_coeff=args.ssl_coeff if use_ssl else 0.0,
        every_n_train_steps=args.every_n_train_steps, save_last=args.save_last, seed=args.seed,
        # 1.5 drops the condition inside its own step (the recipe's cfg_dropout, drawn in the official order)
        dropout=None if recipe is not None else ConditionDropout(args.text_dropout, args.speaker_dropout,
                                                                  args.lyrics_dropout),
        compute_dtype=compute_dtype, autocast=autocast, resume_from=resume_from, validation=validation,
        validation_parts={"checkpoint_dir": checkpoint_dir, "family": family} if validation else None, device=device,
        val_loss=val_loss,
    )
    run = TrainRun(model=model, family=family, setup=setup, dataset=dataset, optimizer=optimizer, scheduler=scheduler,
                   checkpoint_dir=checkpoint_dir,
                   accelerator=accelerator, config=loop_config, metrics=metrics, lyric_cache=cache,
                   train_config=train_config, echo=echo if accelerator.is_main_process else (lambda _: None),
                   summary=memory_lines)
    return run, freed
