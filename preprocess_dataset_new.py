"""Fork-compatible entry point: `python preprocess_dataset_new.py --input_name ... --output_name ... --checkpoint_dir ...`."""
from acetune.cli import run_command

raise SystemExit(run_command("preprocess", prog="preprocess_dataset_new.py"))
