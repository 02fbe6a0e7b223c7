"""Fork-compatible entry point: `python convert2hf_dataset_new.py --data_dir ... --output_name ...`."""
from acetune.cli import run_command

raise SystemExit(run_command("build-dataset", prog="convert2hf_dataset_new.py"))
