"""Run `acetune train` in a subprocess; with `--hang_after_save N`, stall after step N's checkpoint.

    python _train_run.py [--hang_after_save N] -- <acetune train flags>

Prints `SAVED N` (flushed) and sleeps so the test can SIGKILL the process at a known point.
"""

from __future__ import annotations

import sys
import time

import torch

from acetune.cli import run_command
from acetune.training import loop


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # same reduction order in every process: bitwise comparisons
    hang = None
    if argv[:1] == ["--hang_after_save"]:
        hang, argv = int(argv[1]), argv[2:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if hang is not None:
        real = loop.save_checkpoint

        def save_then_hang(run, step, epoch, micro):
            path = real(run, step, epoch, micro)
            if step == hang:
                print(f"SAVED {step}", flush=True)
                while True:
                    time.sleep(60)
            return path

        loop.save_checkpoint = save_then_hang
    return run_command("train", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
