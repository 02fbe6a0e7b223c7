"""acetune.hub against the local Hub (tests/hub_server.py): resolution, resume, offline, errors, remote code."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from acetune import hub
from acetune.cli import run_command
from acetune.errors import CheckpointError, DownloadError, UsageError
from acetune.hub import transfer

REPO = Path(__file__).resolve().parents[1]
BIG = 3 * (1 << 20) + 12345  # bytes of the large file: three write chunks and a bit


@pytest.fixture(scope="module")
def big_repo(local_hub):
    """A model repo with one large (LFS) file, a config and a README; returns (repo id, commit, blob bytes)."""
    data = hashlib.sha256(b"seed").digest() * (BIG // 32) + b"x" * (BIG % 32)
    commit = local_hub.add("acetune-test/big", {"config.json": b'{"model_type": "test"}', "README.md": b"# big",
                                                "weights/model.safetensors": data, "weights/model.bin": b"pickle"})
    return "acetune-test/big", commit, data


def _blob_dir(repo_id: str) -> Path:
    return hub.hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "blobs"


def test_repo_ids_short_names_and_paths(tmp_path):
    assert hub.parse_ref("v1") == ("ACE-Step/ACE-Step-v1-3.5B", None)
    assert hub.parse_ref("mert") == ("m-a-p/MERT-v1-330M", hub.MODELS["mert"].revision)  # pinned by default
    assert hub.parse_ref("ACE-Step/ACE-Step-v1-3.5B@v2") == ("ACE-Step/ACE-Step-v1-3.5B", "v2")
    assert hub.parse_ref("owner\\name") == ("owner/name", None)  # Path("owner/name") on Windows
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert hub.parse_ref(tmp_path / "owner" / "name") is None  # an existing folder wins
    assert hub.parse_ref("./songs/x") is None and hub.parse_ref("a/b/c") is None
    assert hub.resolve_model(tmp_path).path == tmp_path
    with pytest.raises(CheckpointError, match="folder not found"):
        hub.resolve_model("./nothing/here/at/all")


def test_fetch_records_commit_skips_pickles_and_other_formats(hub_env, big_repo):
    repo_id, commit, data = big_repo
    source = hub.fetch(repo_id, all_files=True)
    assert source.commit == commit and source.record()["commit"] == commit
    assert (source.path / "weights" / "model.safetensors").read_bytes() == data
    assert not (source.path / "weights" / "model.bin").exists()  # safetensors present: the pickle is not fetched
    assert source.path.is_relative_to(hub.hub_cache_dir())  # the standard cache, not a private folder


def test_resume_after_a_download_killed_half_way(hub_env, big_repo):
    """A real `acetune download` process is SIGKILLed mid-file; the rerun continues from the bytes on disk."""
    repo_id, _, data = big_repo
    sha = hashlib.sha256(data).hexdigest()
    hub_env.stall(sha, after=BIG // 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "acetune", "download", repo_id, "--no-check"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = _blob_dir(repo_id) / f"{sha}.incomplete"
    deadline = time.monotonic() + 120
    while not (partial.is_file() and partial.stat().st_size >= 1 << 20):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    kept = partial.stat().st_size
    assert 0 < kept < BIG
    served_before = hub_env.served[sha]

    assert run_command("download", [repo_id, "--no-check"]) == 0
    ranges = [r for m, p, r in hub_env.log if p == f"/_cdn/{sha}" and m == "GET"]
    assert ranges[-1] == f"bytes={kept}-"  # resumed where the killed run stopped
    assert hub_env.served[sha] - served_before == BIG - kept  # only the missing bytes crossed the wire
    blob = _blob_dir(repo_id) / sha
    assert blob.read_bytes() == data and not partial.exists()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha


def test_a_dropped_connection_is_resumed_in_the_same_run(hub_env, big_repo):
    repo_id, _, data = big_repo
    sha = hashlib.sha256(data).hexdigest()
    threading.Timer(1.0, hub_env.stall(sha, after=(1 << 20) + 500).set).start()  # cut after 1 MiB + 500 bytes
    hub.fetch(repo_id, all_files=True)
    ranges = [r for m, p, r in hub_env.log if p == f"/_cdn/{sha}" and m == "GET"]
    assert ranges[-2:] == [None, f"bytes={1 << 20}-"]  # the second request continues after the written MiB
    assert (_blob_dir(repo_id) / sha).read_bytes() == data


def test_leftover_partial_of_a_killed_library_download_is_adopted(hub_env, big_repo):
    repo_id, _, data = big_repo
    sha = hashlib.sha256(data).hexdigest()
    blobs = _blob_dir(repo_id)
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.1a2b3c4d.incomplete").write_bytes(data[:1000])  # huggingface_hub's per-process temp name
    hub.fetch(repo_id, all_files=True)
    assert [r for m, p, r in hub_env.log if p == f"/_cdn/{sha}"][-1] == "bytes=1000-"
    assert (blobs / sha).read_bytes() == data


def test_damaged_partial_is_refused_then_fetched_anew(hub_env, big_repo):
    repo_id, _, data = big_repo
    sha = hashlib.sha256(data).hexdigest()
    blobs = _blob_dir(repo_id)
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * 5000)  # wrong bytes: the sha256 check must catch them
    with pytest.raises(DownloadError, match="arrived damaged"):
        hub.fetch(repo_id, all_files=True)
    assert not (blobs / f"{sha}.incomplete").exists() and not (blobs / sha).exists()
    hub.fetch(repo_id, all_files=True)
    assert (blobs / sha).read_bytes() == data


def test_offline_warm_cache_and_cold_cache(hub_env, big_repo, monkeypatch, capsys):
    repo_id, commit, _ = big_repo
    hub.fetch(repo_id, all_files=True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    warm = hub.fetch(repo_id, all_files=True)
    assert warm.commit == commit and (warm.path / "weights" / "model.safetensors").is_file()
    monkeypatch.setenv("HF_HOME", str(warm.path.parents[4] / "cold_home"))
    assert run_command("download", [repo_id, "--no-check"]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "not (completely) in the HF cache" in err[0] and "offline mode is on" in err[0]
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, but the Hub is unreachable and the cache cold
    assert run_command("download", [repo_id, "--no-check"]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "cannot reach the Hub" in err[0]


def test_errors_are_one_line_with_the_fix(hub_env, local_hub, monkeypatch, capsys):
    local_hub.add("acetune-test/gated", {"config.json": b"{}"}, gated=True)
    cases = [(["no-such-org/no-such-model"], "no model repo 'no-such-org/no-such-model'"),
             (["acetune-test/gated"], "is a gated model"),
             (["ACE-Step/ACE-Step-v1-3.5B@no-such-branch"], None)]
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_abcdef")
    for argv, expected in cases:
        code = run_command("download", [*argv, "--no-check"])
        err = error_lines(capsys)
        assert code == 1 and len(err) == 1 and err[0].startswith("Error: "), err
        assert expected is None or expected in err[0]
        assert "hf_wrong_token_abcdef" not in err[0] and " — " in err[0]  # never the token; always a fix
    assert "hf auth login" in run_and_capture(capsys, ["acetune-test/gated"])
    monkeypatch.setenv("HF_TOKEN", local_hub.token)  # the right token opens it
    assert run_command("download", ["acetune-test/gated", "--no-check"]) == 0
    assert local_hub.token not in capsys.readouterr().out


def error_lines(capsys) -> list[str]:
    """The `Error:` lines of stderr (the progress line before them is not an error); never a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("Error")]


def run_and_capture(capsys, argv) -> str:
    run_command("download", [*argv, "--no-check"])
    return capsys.readouterr().err


def test_disk_full_before_and_during_a_download(hub_env, big_repo, monkeypatch, capsys):
    repo_id, _, data = big_repo
    monkeypatch.setattr(transfer, "free_bytes", lambda folder: 1000)
    assert run_command("download", [repo_id, "--no-check"]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "needs 0.00 GB more but only 0.00 GB are free" in err[0] and "HF_HOME" in err[0]
    monkeypatch.undo()
    for name, value in (("HF_ENDPOINT", hub_env.url), ("HF_HOME", str(hub.hub_cache_dir().parent))):
        monkeypatch.setenv(name, value)

    real_open = open

    class FullDisk:
        def __init__(self, path, mode):
            self.fh = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, chunk):
            if self.fh.tell() >= 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(chunk)

        def flush(self):
            self.fh.flush()

    monkeypatch.setattr(transfer, "open", FullDisk, raising=False)
    assert run_command("download", [repo_id, "--no-check"]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "disk full while downloading" in err[0]
    sha = hashlib.sha256(data).hexdigest()
    assert (_blob_dir(repo_id) / f"{sha}.incomplete").stat().st_size == 1 << 20  # kept for the next run


def test_remote_code_runs_only_from_a_pinned_commit(hub_env, local_hub):
    commit = local_hub.add("acetune-test/remote-code", {
        "config.json": b'{"model_type": "mert_model", "auto_map": {"AutoModel": "modeling_x.XModel"}}',
        "modeling_x.py": b"raise SystemExit('must never run')"})
    with pytest.raises(UsageError, match="only from a pinned commit") as err:
        hub.resolve_model("acetune-test/remote-code", flag="--mert_dir", trust_remote_code=True)
    assert f"--mert_dir acetune-test/remote-code@{commit}" in str(err.value)
    pinned = hub.resolve_model(f"acetune-test/remote-code@{commit}", flag="--mert_dir", trust_remote_code=True)
    assert pinned.commit == commit and pinned.revision == commit
    # without the flag resolving is fine: the loader itself refuses to run the code (naming the flag)
    assert hub.resolve_model("acetune-test/remote-code", flag="--mert_dir").commit == commit


def test_resume_accepts_a_change_of_hub_flags_only():
    """--offline on resume, or `--revision main` for the same commit, is not a hyper-parameter change."""
    from acetune.training.run_folder import changes

    saved = {"offline": False, "revision": "", "checkpoint_source": {"commit": "a" * 40}, "learning_rate": 1e-4}
    assert changes(saved, {**saved, "offline": True, "revision": "main", "checkpoint_source": {"commit": "b" * 40}}) == []
    assert changes(saved, {**saved, "learning_rate": 2e-4}) == ["--learning_rate 0.0001 -> 0.0002"]
