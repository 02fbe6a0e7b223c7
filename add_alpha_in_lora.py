"""The fork's script name: `python add_alpha_in_lora.py --input_name X --output_name Y [--lora_config_path C]`."""
import sys

from acetune.cli import run_command

sys.exit(run_command("export", ["--bake_alpha", *sys.argv[1:]], prog="add_alpha_in_lora.py"))
