"""preprocess under interruption and scale-out: a real SIGKILL mid-run, then shards + merge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_preprocess import build, make_songs, preprocess, rows_by_key

from acetune.dataset import schema

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    return build(make_songs(root / "songs", n_extra=5), root / "songs_filenames")


@pytest.fixture(scope="module")
def full_run(dataset, tiny_ckpt, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("full") / "prep"
    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt) == 0
    return rows_by_key(out)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_run_then_rerun_gives_the_same_rows(dataset, tiny_ckpt, full_run, tmp_path):
    out = tmp_path / "prep"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "ACETUNE_NO_PROGRESS": "1"}
    cmd = [sys.executable, str(REPO / "preprocess_dataset_new.py"), "--input_name", str(dataset),
           "--output_name", str(out), "--checkpoint_dir", str(tiny_ckpt), "--part_size", "1", "--num_workers", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not schema.part_dirs(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    finished = len(schema.part_dirs(out))
    assert 1 <= finished < len(full_run), "the kill should land mid-run"
    partial = rows_by_key(out)  # a valid dataset right after the kill
    assert set(partial) < set(full_run)

    assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                      "--part_size", "1") == 0
    rows = rows_by_key(out)  # asserts no duplicate keys
    assert rows.keys() == full_run.keys()
    for key, row in rows.items():
        assert row == full_run[key], key
    assert not [p for p in (out / schema.PARTS_DIR).iterdir() if p.name.startswith(".")]  # temp folders gone


def test_shards_then_merge_equal_one_run(dataset, tiny_ckpt, full_run, tmp_path, capsys):
    outs = []
    for i in range(2):
        out = tmp_path / f"prep_{i}"
        assert preprocess("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                          "--num_shards", 2, "--shard_index", i) == 0
        outs.append(out)
    a, b = rows_by_key(outs[0]), rows_by_key(outs[1])
    assert not set(a) & set(b) and set(a) | set(b) == set(full_run)
    merged = tmp_path / "merged"
    assert preprocess("--merge", *outs, "--output_name", merged) == 0
    rows = rows_by_key(merged)
    assert rows.keys() == full_run.keys() and all(rows[k] == full_run[k] for k in rows)
    assert preprocess("--merge", *outs, "--output_name", merged) == 0  # merging again adds nothing
    assert "0 part(s)" in capsys.readouterr().out
    assert len(rows_by_key(merged)) == len(full_run)
    # shards may also write into one shared folder at once: part names carry the shard
    shared = tmp_path / "shared"
    for i in range(2):
        assert preprocess("--input_name", dataset, "--output_name", shared, "--checkpoint_dir", tiny_ckpt,
                          "--num_shards", 2, "--shard_index", i) == 0
    assert rows_by_key(shared).keys() == full_run.keys()
