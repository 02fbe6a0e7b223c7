"""acetune.audio.banded: the banded product equals the dense one and skips most zeros of the audio maps."""

import pytest
import torch

from acetune.audio.banded import BandedMatrix
from acetune.audio.resample import resample_kernel
from acetune.models.v1.mel import slaney_mel_filterbank


def _random_banded(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Columns non-zero on one run each, with an empty column and a zero inside a run."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(rows, cols)
    for c in range(cols):
        lo = int(torch.randint(0, rows - 4, (1,), generator=g))
        hi = lo + int(torch.randint(1, 5, (1,), generator=g))
        w[lo:hi, c] = torch.randn(hi - lo, generator=g)
    w[:, cols // 2] = 0  # an empty column
    w[w.nonzero()[3, 0], w.nonzero()[3, 1]] = 0  # a zero inside a run
    return w


@pytest.mark.parametrize("group_cost", [0, 64, 1024, 10**9])
def test_equals_dense_product_for_any_grouping(group_cost):
    w = _random_banded(40, 30, seed=group_cost % 7)
    x = torch.randn(50, 40) * torch.logspace(-3, 3, 40)  # columns of very different scales
    banded = BandedMatrix(w, group_cost)
    torch.testing.assert_close(banded.matmul(x), x @ w, rtol=1e-6, atol=1e-6 * x.abs().max().item())
    columns = [c for a, b, _, _ in banded.groups for c in range(a, b)]
    assert columns == list(range(30))  # every column in exactly one group, in order
    if group_cost == 10**9:
        assert len(banded.groups) == 1


def test_strided_input_output_and_leading_dims():
    w = _random_banded(24, 16, seed=3)
    banded = BandedMatrix(w, group_cost=0)
    signal = torch.randn(24 * 40)
    frames = signal.unfold(0, 24, 10)  # overlapping rows, a strided view
    out = torch.full((frames.shape[0], 20), float("nan"))
    banded.matmul(frames, out=out[:, 2:18])
    torch.testing.assert_close(out[:, 2:18], frames @ w)
    assert out[:, :2].isnan().all() and out[:, 18:].isnan().all()  # nothing written outside the view
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(banded.matmul(x), x @ w)
    with pytest.raises(ValueError, match="columns"):
        banded.matmul(torch.randn(5, 23))


def test_audio_maps_need_a_fraction_of_the_dense_work():
    """The numbers in resample.py's and mel.py's docstrings."""
    table = resample_kernel(48000, 44100)[0][:, 0, :].T  # (174, 147)
    taps = BandedMatrix(table)
    nonzero_per_phase = (table != 0).sum(0)
    assert int(nonzero_per_phase.max()) <= 14
    assert taps.multiply_adds <= table.numel() / 3.5  # "a quarter of the dense multiply-adds"
    fb = slaney_mel_filterbank(1025, 40.0, 16000.0, 128, 44100)
    covered = int((fb != 0).any(1).nonzero().max()) + 1
    assert covered == 744
    assert BandedMatrix(fb[:covered], group_cost=4096).multiply_adds <= fb[:covered].numel() / 4
