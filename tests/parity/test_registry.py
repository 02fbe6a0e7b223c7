import torch

from acetune.parity.registry import rel_l2, row_abs, row_exact


def test_rel_l2_matches_definition():
    ref = torch.tensor([3.0, 4.0])
    out = torch.tensor([3.0, 4.5])
    assert abs(rel_l2(out, ref) - 0.5 / 5.0) < 1e-12
    assert rel_l2(out, ref[:1]) == float("inf")


def test_rows_pass_and_fail():
    assert row_abs("c", "t", torch.tensor(1.0), torch.tensor(1.0 + 1e-6), 1e-5).passed
    assert not row_abs("c", "t", torch.tensor(1.0), torch.tensor(1.1), 1e-5).passed
    assert row_exact("c", "ids", torch.tensor([1, 2]), torch.tensor([1, 2])).passed
    assert not row_exact("c", "ids", torch.tensor([1, 2]), torch.tensor([1, 3])).passed
