"""Shared fixtures: the golden folder, tiny generated audio, quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ACETUNE_NO_PROGRESS", "1")


def golden_path() -> Path:
    return Path(os.environ.get("ACETUNE_GOLDEN", REPO.parent / "shared" / "golden")).resolve()


@pytest.fixture(scope="session")
def golden() -> Path:
    """The golden-vector folder. Missing: skip with a message, but fail under CI=true."""
    path = golden_path()
    if not path.is_dir():
        msg = f"golden vectors not found at {path} (set ACETUNE_GOLDEN)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI requires them", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
