"""What makes a resumed run bit-identical to an uninterrupted one: RNG state and data order.

A run killed after step N and resumed must replay steps N+1.. exactly. That holds when

1. the trainable weights and optimizer/scheduler state are restored (`checkpoint.py`);
2. every random stream the step touches is restored: torch CPU (noise, timesteps, dropout,
   condition dropout), torch CUDA, python `random` (prompt variants), numpy (`get_rng_state` /
   `set_rng_state`, saved in every checkpoint);
3. the data order is a pure function of (seed, epoch), so the resumed run can skip the batches
   already consumed in the current epoch (`EpochShuffleSampler`, `resume_position`);
4. nothing else draws from the global RNG between steps. Note: every `iter(DataLoader)` draws one
   number from the global torch RNG for its worker base seed unless the loader has its own
   generator, so build loaders with `generator=loader_generator(seed)`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for a DataLoader, so iterating it never consumes the global torch RNG."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# RNG state: {"torch_cpu": ByteTensor, "torch_cuda": [ByteTensor per device], "python": ...,
# "numpy": ...}. Tensors go to safetensors and the rest to JSON in checkpoint.py.
# ---------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Capture every global RNG a training step uses (tensors + JSON-able values)."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(v) for v in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured (CUDA only if both sides have the same device count)."""
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["bit_generator"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([t.to(torch.uint8).cpu() for t in cuda])


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of `epoch`: a permutation keyed by (seed, epoch) only.

    numpy's SeedSequence mixes the pair, so (seed 1, epoch 0) and (seed 0, epoch 1) differ.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    return [int(i) for i in rng.permutation(num_samples)]


class EpochShuffleSampler(Sampler[int]):
    """Shuffled sample indices whose order depends only on (seed, epoch); resumable mid-epoch.

    Use as `DataLoader(ds, batch_size=B, sampler=s, generator=loader_generator(seed))`. Call
    `set_epoch(e)` before each epoch. To resume, `set_epoch(epoch); skip(batches_done * B)`:
    the next iteration starts at that position; later epochs start at 0 again.

    With `num_replicas > 1` (DDP) each rank takes every `num_replicas`-th index of the epoch
    order, padded by wrapping so all ranks get the same count (as torch's DistributedSampler).

    Args:
        num_samples: dataset length.
        seed: run seed; the order never touches the global RNG.
        shuffle: False gives 0..n-1 every epoch (for debugging / overfit checks).
    """

    def __init__(self, num_samples: int, seed: int = 0, *, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if num_samples < 1:
            raise ValueError("EpochShuffleSampler needs at least one sample")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_indices: int) -> None:
        """Start the next iteration `num_indices` into this rank's order of the current epoch."""
        self._start = num_indices

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for `epoch` (without any skip)."""
        order = epoch_permutation(self.num_samples, self.seed, epoch) if self.shuffle else list(range(self.num_samples))
        per_rank = -(-self.num_samples // self.num_replicas)  # ceil
        padded = (order * (per_rank * self.num_replicas // len(order) + 1))[: per_rank * self.num_replicas]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)[self._start :]
        self._start = 0  # the skip applies to one iteration only
        return iter(indices)

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas) - self._start


def batches_per_epoch(num_samples_per_rank: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of (micro-)batches a DataLoader yields per epoch for one rank."""
    return num_samples_per_rank // batch_size if drop_last else -(-num_samples_per_rank // batch_size)


def resume_position(micro_batches_done: int, batches_in_epoch: int) -> tuple[int, int]:
    """(epoch, batches already consumed in that epoch) after `micro_batches_done` batches.

    `micro_batches_done` = optimizer steps x accumulate_grad_batches when every epoch is consumed
    whole (an accumulation window may span an epoch boundary, as in Lightning).
    """
    if batches_in_epoch < 1:
        raise ValueError("batches_in_epoch must be >= 1")
    return divmod(micro_batches_done, batches_in_epoch)
