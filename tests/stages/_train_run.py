"""Run `acetune train` in a subprocess; with `--hang_after_save N`, stall after step N's checkpoint.

    python _train_run.py [--hang_after_save N] -- <acetune train flags>
    python _train_run.py --fork_ranks N LOG_DIR -- <acetune train flags>

Prints `SAVED N` (flushed) and sleeps so the test can SIGKILL the process at a known point.

`--fork_ranks N LOG_DIR` runs N DDP ranks (gloo, MASTER_ADDR/MASTER_PORT from the environment) as
children forked after the heavy imports (torch, diffusers, peft, accelerate, datasets: ~90% of a tiny
run's time), each writing stdout/stderr to LOG_DIR/rank<r>.out / .err; exits 0 when every rank did.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

from acetune.cli import run_command
from acetune.training import loop


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the launcher dies (a test timeout kills only the launcher)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def fork_ranks(n: int, log_dir: Path, argv: list[str]) -> int:
    import accelerate  # noqa: F401  (imported once here, inherited by the children)
    import datasets  # noqa: F401

    import acetune.models.v1.transformer  # noqa: F401
    import acetune.stages.train  # noqa: F401

    log_dir.mkdir(parents=True, exist_ok=True)
    children = []
    for rank in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent()
                for fd, suffix in ((1, "out"), (2, "err")):
                    target = os.open(log_dir / f"rank{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(target, fd)
                    os.close(target)
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n))
                code = run_command("train", argv)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    return max(abs(c) for c in codes)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # same reduction order in every process: bitwise comparisons
    hang = None
    if argv[:1] == ["--fork_ranks"]:
        n, log_dir = int(argv[1]), Path(argv[2])
        argv = argv[3:]
        return fork_ranks(n, log_dir, argv[1:] if argv[:1] == ["--"] else argv)
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
