"""The fork's script name: `python trainer_new.py --dataset_path D --checkpoint_dir C ...` = `acetune train`."""
import sys

from acetune.cli import run_command

sys.exit(run_command("train", sys.argv[1:], prog="trainer_new.py"))
