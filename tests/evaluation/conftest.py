"""One tiny random CLAP in the Hub folder layout for the evaluation tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory) -> Path:
    from acetune.evaluation.tiny_clap import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "clap-tiny")
