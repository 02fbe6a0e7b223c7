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


@pytest.fixture(scope="session")
def local_hub():
    """The local Hub server (tests/hub_server.py), one per session; tests add their repos to it."""
    from hub_server import LocalHub

    hub = LocalHub()
    yield hub
    hub.close()


@pytest.fixture
def hub_env(local_hub, tmp_path, monkeypatch):
    """HF_ENDPOINT at the local Hub and a fresh HF_HOME in tmp: nothing touches the user's cache or network."""
    monkeypatch.setenv("HF_ENDPOINT", local_hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf_home" / "no-token"))
    return local_hub
