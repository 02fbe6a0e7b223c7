"""Shared fixtures: the golden folder, tiny generated audio, quiet progress bars; the slowest files first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before torch loads OpenMP (it reads this once), inherited by the xdist workers and every subprocess a test
# starts: an idle OpenMP thread sleeps instead of spinning. Two workers (and launched ranks) share the cores,
# and spinning threads then burn a core while the thread they wait for is descheduled (measured: two
# 2-thread processes on 2 cores, 3-5x less CPU). Threads and results are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ACETUNE_NO_PROGRESS", "1")

# The slowest test files (pytest --durations), run first: with `--dist loadfile` (pyproject addopts) each
# file goes whole to one worker, so a long file started last would leave the other cores idle at the end.
# Workers keep torch's default thread count: golden parity sums depend on it (at 1 thread the 1.5 step's
# loss moves 1.9e-6 from the official one, over its 1e-6 bound).
SLOW_FILES_FIRST = (  # by the summed --durations of a quiet serial run (docs/benchmarks.md "Tests")
    "tests/studio/test_browser.py",
    "tests/stages/test_preprocess_launch.py",
    "tests/training/test_fsdp.py",
    "tests/stages/test_train.py",
    "tests/training/test_checkpoint.py",
    "tests/stages/test_export.py",
    "tests/stages/test_generate.py",
    "tests/stages/test_demo.py",
    "tests/stages/test_preprocess_resume.py",
    "tests/training/test_validation.py",
    "tests/audio/test_analysis.py",
    "tests/test_hub.py",
    "tests/models/v15/test_end_to_end.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: file order kept


def pytest_testnodedown(node, error):
    """A pytest-xdist worker that died (OOM killer, a signal, the faulthandler timeout) ends the run: say so
    even under -q, where xdist's own summary line is not shown (pyproject: --max-worker-restart=0)."""
    if error:
        reporter = node.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"worker {node.gateway.id} died ({error}): the run stops; the tests it had left "
                                "did not run", red=True, bold=True)


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
def _seed_and_threads():
    """Seed 0; and torch's thread count back after the test (test_fsdp sets 1): the golden parity sums
    depend on it, and which files share a worker process changes from run to run."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
