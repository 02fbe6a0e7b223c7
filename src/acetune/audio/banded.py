"""Matrix products with a banded weight: skip the rows of W that are zero for a block of columns.

Both fixed linear maps of the audio path are banded. A resampling phase weights only the ~13 input
samples within six sinc zero crossings of its output time, out of the 2W + o taps its block spans
(at most 14 of 174 for 48 → 44.1 kHz), and a mel filter covers only the STFT bins between its two edges
(about 2 of 128 filters are non-zero at any bin). The dense products `x @ W` therefore spend most of
their multiply-adds on zeros. `BandedMatrix` splits W's columns into consecutive groups and multiplies
each group only by the rows where it has a non-zero, the union of its columns' runs:

    out[..., a:b] = x[..., lo:hi] @ W[lo:hi, a:b]

Exact in value: the skipped terms are 0 · x (inputs are finite), so each output is the same sum of the
same non-zero products. Only the order the GEMM kernel adds them in may differ, hence float rounding.
Hand-written because torch's sparse kernels lose to dense BLAS at this density and shape.
"""

from __future__ import annotations

import torch

# Column groups are chosen to minimise multiply-adds plus this fixed cost per group, counted in
# multiply-adds per row of x: one more GEMM call and its output copy outweigh a few zeros (1024
# measured fastest for the resampling tables, at 4096 blocks per call).
_GROUP_COST = 1024


def _column_runs(weight: torch.Tensor) -> tuple[list[int], list[int]]:
    """First and one-past-last non-zero row of every column of a (K, N) matrix (empty column: 0, 0)."""
    nonzero = weight != 0
    rows = torch.arange(weight.shape[0])[:, None]
    has = nonzero.any(dim=0)
    first = torch.where(nonzero, rows, weight.shape[0]).amin(dim=0)
    last = torch.where(nonzero, rows, -1).amax(dim=0) + 1
    return torch.where(has, first, 0).tolist(), torch.where(has, last, 0).tolist()


def _best_groups(first: list[int], last: list[int], group_cost: int) -> list[tuple[int, int, int, int]]:
    """Split columns 0..N into consecutive groups (a, b, lo, hi) of least total (hi − lo)·(b − a) + cost.

    Dynamic programming over the split points (N is at most a few hundred); an empty group has lo = hi = 0.
    """
    n = len(first)
    best = [0.0] + [float("inf")] * n  # best[b]: least cost of columns 0..b
    choice = [(0, 0, 0)] * (n + 1)  # choice[b]: (a, lo, hi) of the last group in that split
    for b in range(1, n + 1):
        lo, hi = float("inf"), -1  # the union of the non-empty runs of columns a..b-1 (none yet)
        for a in range(b - 1, -1, -1):  # grow the last group leftwards
            if last[a] > first[a]:
                lo, hi = min(lo, first[a]), max(hi, last[a])
            cost = best[a] + max(hi - lo, 0) * (b - a) + group_cost
            if cost < best[b]:
                best[b], choice[b] = cost, (a, lo, hi) if hi > lo else (a, 0, 0)
    groups, b = [], n
    while b > 0:
        a, lo, hi = choice[b]
        groups.append((a, b, lo, hi))
        b = a
    return groups[::-1]


class BandedMatrix:
    """A fixed (K, N) weight, stored as column groups with their non-zero row ranges.

    Args:
        weight: (K, N) matrix whose columns are each non-zero on one run of rows (zeros inside a
            run are fine; they are multiplied as usual).
        group_cost: fixed cost per group in multiply-adds per row (see `_GROUP_COST`).
    """

    def __init__(self, weight: torch.Tensor, group_cost: int = _GROUP_COST):
        if weight.ndim != 2:
            raise ValueError(f"BandedMatrix needs a (K, N) matrix, got shape {tuple(weight.shape)}")
        self.shape = tuple(weight.shape)
        self.groups = _best_groups(*_column_runs(weight), group_cost)
        self.blocks = [weight[lo:hi, a:b].contiguous() for a, b, lo, hi in self.groups]

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds per row of x (the dense product needs K · N)."""
        return sum((hi - lo) * (b - a) for a, b, lo, hi in self.groups)

    def matmul(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) @ W -> (..., N), in x's dtype.

        `x` may be a strided view (e.g. an unfold); a 2-D x whose rows are BLAS-addressable goes to
        the GEMM without a copy. `out` (same shape as the result, 2-D x only) may be a strided view
        too: each group writes its columns in place.
        """
        if x.shape[-1] != self.shape[0]:
            raise ValueError(f"x has {x.shape[-1]} columns, the weight {self.shape[0]} rows")
        if out is None:
            out = x.new_empty(*x.shape[:-1], self.shape[1])
        for (a, b, lo, hi), block in zip(self.groups, self.blocks):
            if hi <= lo:
                out[..., a:b] = 0
            elif x.ndim == 2:
                torch.mm(x[:, lo:hi], block.to(x.dtype), out=out[:, a:b])
            else:
                out[..., a:b] = torch.matmul(x[..., lo:hi], block.to(x.dtype))
        return out
