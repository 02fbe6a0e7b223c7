"""Did the LoRA learn? CLAP scores, the evaluation report and its plots (`acetune evaluate`)."""
