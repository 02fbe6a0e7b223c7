"""Resume helpers: RNG capture/restore and the (seed, epoch)-keyed, skippable sampler."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from acetune.training.resume import (
    EpochShuffleSampler,
    batches_per_epoch,
    epoch_permutation,
    get_rng_state,
    loader_generator,
    resume_position,
    seed_everything,
    set_rng_state,
)


def _draw():
    return torch.rand(3).tolist(), random.random(), float(np.random.rand()), random.gauss(0, 1)


def test_rng_state_round_trip():
    seed_everything(5)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = get_rng_state()
    first = _draw()
    _draw()
    set_rng_state(state)
    assert _draw() == first


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert epoch_permutation(10, 1, 0) == epoch_permutation(10, 1, 0)
    assert sorted(epoch_permutation(10, 1, 0)) == list(range(10))
    assert epoch_permutation(10, 1, 0) != epoch_permutation(10, 1, 1)
    assert epoch_permutation(10, 1, 0) != epoch_permutation(10, 0, 1)  # (seed, epoch) are mixed, not added
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(EpochShuffleSampler(10, 3))
    assert torch.equal(before, torch.get_rng_state())  # never touches the global RNG


def test_sampler_skip_resumes_mid_epoch():
    sampler = EpochShuffleSampler(10, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(4)
    assert len(sampler) == 6
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applied to one pass only

    loader = DataLoader(list(range(10)), batch_size=4, sampler=sampler, generator=loader_generator(7))
    sampler.skip(4)
    assert [b.tolist() for b in loader] == [full[4:8], full[8:]]


def test_sampler_shards_for_ddp():
    ranks = [EpochShuffleSampler(10, seed=1, num_replicas=3, rank=r) for r in range(3)]
    parts = [r.epoch_indices(0) for r in ranks]
    assert [len(p) for p in parts] == [4, 4, 4] and all(len(r) == 4 for r in ranks)
    assert set(sum(parts, [])) == set(range(10))  # 12 slots, 2 wrapped duplicates
    assert EpochShuffleSampler(5, shuffle=False).epoch_indices(3) == [0, 1, 2, 3, 4]


def test_resume_position():
    per_epoch = batches_per_epoch(10, 4)
    assert per_epoch == 3 and batches_per_epoch(10, 4, drop_last=True) == 2
    assert resume_position(8, per_epoch) == (2, 2)
    assert resume_position(0, per_epoch) == (0, 0)
    assert resume_position(9, per_epoch) == (3, 0)
