"""Fork-compatible entry point: `python generate_prompts_lyrics.py --data_dir ... [--lyrics]`."""
from acetune.cli import run_command

raise SystemExit(run_command("caption", prog="generate_prompts_lyrics.py"))
