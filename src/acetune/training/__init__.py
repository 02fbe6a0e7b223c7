"""Training machinery: loop, LoRA setup, data, optimizers, checkpoints, loggers, validation."""
