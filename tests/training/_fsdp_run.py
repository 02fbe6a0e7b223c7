"""`acetune train` with every random draw keyed by the sample, so 1 and N processes see the same numbers.

    python _fsdp_run.py --fork_ranks N LOG_DIR -- <acetune train flags>   # N ranks (gloo), FSDP env set
    python _fsdp_run.py -- <acetune train flags>                           # one process

Noise and timestep of each sample come from a generator seeded by the sample's own latents, and
dropout is off: what differs between one process and FSDP over N is then only the sharding, the
gradient reduction and the gather/scatter of checkpoints, which is what the test compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))


def keyed_randomness() -> None:
    """Patch the loop's step module: per-sample noise and u, no dropout (idempotent)."""
    from acetune.training import loop

    if getattr(loop.StepModule, "_keyed", False):
        return
    real = loop.StepModule.forward

    def forward(self, batch, noise=None, u=None):
        x0 = batch["target_latents"]
        noises, us = [], []
        for sample in x0:
            seed = int(sample.double().abs().sum().item() * 1e4) % (2 ** 31)
            g = torch.Generator().manual_seed(seed)
            noises.append(torch.randn(sample.shape, generator=g))
            us.append(torch.randn(1, generator=g))
        return real(self, batch, noise=torch.stack(noises), u=torch.cat(us))

    loop.StepModule.forward = forward
    loop.StepModule._keyed = True
    torch.nn.functional.dropout = lambda x, p=0.5, training=True, inplace=False: x
    torch.nn.Dropout.forward = lambda self, x: x


def main(argv: list[str]) -> int:
    import os

    torch.set_num_threads(1)
    keyed_randomness()
    if argv[:1] == ["--fork_ranks"]:
        from _train_run import fork_ranks

        os.environ["ACCELERATE_USE_FSDP"] = "true"  # what `accelerate launch` sets from an FSDP config
        n, log_dir, rest = int(argv[1]), Path(argv[2]), argv[3:]
        return fork_ranks(n, log_dir, rest[1:] if rest[:1] == ["--"] else rest)
    from acetune.cli import run_command

    return run_command("train", argv[1:] if argv[:1] == ["--"] else argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
