"""Our det_init against det_init_check.json (seeds, first values, sums, sha256 of the fp32 bytes)."""

from __future__ import annotations

import hashlib
import json

import pytest

from acetune.parity.det_init import det_value, key_seed


def sha(t) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def check_file(golden):
    data = json.loads((golden / "det_init_check.json").read_text())
    shapes = json.loads((golden / "v1_full_manifest.json").read_text())["models"]["ace_step_transformer"]["keys"]
    return data, {k: v["shape"] for k, v in shapes.items()}


def test_examples(golden):
    data, _ = check_file(golden)
    for ex in data["examples"]:
        value = det_value(ex["key"], ex["shape"])
        assert key_seed(ex["key"]) == ex["seed"]
        assert value.flatten()[: len(ex["first_values"])].tolist() == ex["first_values"]
        assert sha(value) == ex["sha256_f32le"], ex["key"]


def official(golden, small_only: bool):
    data, shapes = check_file(golden)
    params = data["official_transformer_parameters"]
    assert set(params) == set(shapes)
    checked = 0
    for key, ref in params.items():
        numel = 1
        for d in shapes[key]:
            numel *= d
        if small_only and numel > 300_000:
            continue
        value = det_value(key, shapes[key])
        assert sha(value) == ref["sha256_f32le"], key
        assert abs(value.double().sum().item() - ref["sum_float64"]) <= 1e-9 * max(1.0, abs(ref["sum_float64"])), key
        checked += 1
    return checked


def test_official_parameters_small(golden):
    assert official(golden, small_only=True) >= 480


@pytest.mark.slow
def test_official_parameters_all(golden):
    assert official(golden, small_only=False) == 874
