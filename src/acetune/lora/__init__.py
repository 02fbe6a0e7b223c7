"""LoRA files: key names per family, reading and checking a file, fusing into weights."""
