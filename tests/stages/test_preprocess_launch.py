"""preprocess under `accelerate launch` / `torchrun` (2 CPU processes, gloo) against one process, row for row.

Each launch is a real launcher with real processes (~20 s of imports on a busy 2-core machine), so
the three launches prove: equality with a bad song in rank 1's block, a SIGKILLed rank resumed
without redoing the other's parts, and a failing rank stopping the launch with one line, no hang.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_preprocess import build, make_songs, preprocess

from acetune.dataset import schema
from acetune.preprocessing import distributed
from acetune.report import Report
from acetune.stages.preprocess import read_songs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and the gloo launch are tested on POSIX")
LAUNCH_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, *argv, env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` or `torchrun` of 2 processes running `acetune preprocess argv` (CPU, gloo)."""
    port = str(free_port())
    if launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    cmd = [*head, "-m", "acetune", "preprocess", *map(str, argv), "--num_workers", "0", "--device", "cpu"]
    # the in-process run's thread count: CPU float sums depend on it
    threads = str(torch.get_num_threads())
    full_env = {**os.environ, "OMP_NUM_THREADS": threads, "ACETUNE_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                          start_new_session=True)


def rows_in_order(out: Path) -> list[dict]:
    ds, _ = schema.load_dataset(out)
    return list(ds)


def part_times(out: Path) -> dict[str, int]:
    return {p.name: max(f.stat().st_mtime_ns for f in p.iterdir()) for p in schema.part_dirs(out)}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, list]:
    """8 songs (1-3 s) and their unique-song order; the last one is broken after build-dataset (rank 1's block)."""
    root = tmp_path_factory.mktemp("launch")
    dataset = build(make_songs(root / "songs", n_extra=5), root / "songs_filenames")
    songs = read_songs(dataset, Report("test"))
    Path(songs[-1].filename).write_bytes(b"RIFF" + b"\x00" * 64)
    return dataset, songs


@pytest.fixture(scope="module")
def one_process(library, tiny_ckpt, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "prep"
    assert preprocess("--input_name", library[0], "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                      "--part_size", 2) == 0
    return rows_in_order(out)


def test_split_blocks_are_contiguous_in_song_order():
    songs = list(range(23))
    for shards, world in ((1, 1), (1, 2), (3, 1), (2, 3), (4, 4)):
        splits = [distributed.Split(shards, i, world, r) for i in range(shards) for r in range(world)]
        assert [s.tag for s in splits] == sorted(s.tag for s in splits)  # name order = block order
        assert [x for s in splits for x in s.rank_songs(songs)] == songs  # every song once, in order
        for s in splits:
            assert s.tag in s.launch_tags() and s.settings() == {"num_shards": shards * world, "shard_index": s.block}
    assert distributed.Split(4, 2).tag == "s002of004"  # one process per shard: the tags of earlier versions


def test_accelerate_launch_equals_one_process_row_for_row(library, tiny_ckpt, one_process, tmp_path):
    dataset, songs = library
    out = tmp_path / "prep"
    done = launch("accelerate", "--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                  "--part_size", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_in_order(out)
    assert [r[schema.KEY] for r in rows] == [r[schema.KEY] for r in one_process]  # same order
    for row, expected in zip(rows, one_process):  # every column of every row
        assert row == expected, [k for k in row if row[k] != expected[k]]
    assert {p.name.rsplit("-", 1)[0] for p in schema.part_dirs(out)} == {"part-s000of002", "part-s001of002"}
    assert "rank 1 of 2 wrote 3 rows" in done.stderr
    # rank 0 prints one summary of all ranks, with rank 1's bad song
    assert f"[error] {songs[-1].filename}: cannot decode audio" in done.stderr, done.stderr[-3000:]
    assert re.search(r"output rows +7\n", done.stderr) and re.search(r"songs encoded +7\n", done.stderr)
    assert not [p for p in (out / schema.PARTS_DIR).iterdir() if p.name.startswith(".")]


def test_killed_rank_resumes_without_redoing_the_others(library, tiny_ckpt, one_process, tmp_path):
    dataset, songs = library
    out = tmp_path / "prep"
    args = ("--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt, "--part_size", 1)
    killed = launch("torchrun", *args, env={distributed.TEST_KILL_VAR: "1:1"})  # rank 1: SIGKILL after 1 part
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    before = part_times(out)
    assert "part-s001of002-00000" in before and not any(n.startswith("part-s001of002-00001") for n in before)
    time.sleep(0.05)  # distinct mtimes for anything rewritten

    rerun = launch("torchrun", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = part_times(out)
    assert {n: after[n] for n in before} == before  # nothing finished was rewritten or deleted
    redone = [n for n in after if n not in before]
    missing = len(one_process) - sum(len(rows) for rows in map(_rows_of_part, [out / "parts" / n for n in before]))
    assert len(redone) == missing  # one part per encoded song: only the missing ones were encoded
    assert rows_in_order(out) == one_process
    assert not [p for p in (out / schema.PARTS_DIR).iterdir() if p.name.startswith(".")]


def test_failing_rank_stops_the_launch_with_one_line(tiny_ckpt, tmp_path):
    dataset = build(make_songs(tmp_path / "songs", n_extra=5), tmp_path / "songs_filenames")
    for song in read_songs(dataset, Report("test"))[4:]:  # rank 1's whole block: it cannot encode anything
        Path(song.filename).write_bytes(b"RIFF" + b"\x00" * 64)
    out = tmp_path / "prep"
    start = time.monotonic()
    done = launch("torchrun", "--input_name", dataset, "--output_name", out, "--checkpoint_dir", tiny_ckpt,
                  "--rank_timeout", 10)
    assert time.monotonic() - start < 10 * 60  # no wait for the timeout
    assert done.returncode != 0
    assert "Error: rank 1 of 2 failed: " in done.stderr and "none of the 4 songs could be encoded" in done.stderr
    assert "run the same command again" in done.stderr, done.stderr[-3000:]
    # a launcher prints its own report of failed processes; acetune's processes print no traceback
    assert not [line for line in done.stderr.splitlines() if line.strip().startswith("File ") and "acetune" in line]
    assert len(rows_in_order(out)) == 4  # rank 0 finished its block



def _rows_of_part(part: Path) -> list[str]:
    from datasets import load_from_disk

    return load_from_disk(str(part))[schema.KEY]


def test_check_order_warns_only_when_rows_left_the_song_order(tmp_path):
    class Song:
        def __init__(self, key):
            self.keys = key

    out = tmp_path / "prep"
    for name in ("part-s000of002-00000", "part-s001of002-00000"):
        (out / schema.PARTS_DIR / name).mkdir(parents=True)
    songs = [Song("a"), Song("b"), Song("c")]
    keys = {"part-s000of002-00000": ["a", "b"], "part-s001of002-00000": ["c"]}
    report = Report("t")
    assert distributed.check_order(out, songs, report, index=lambda p: keys[p.name]) and not report.problems
    keys = {"part-s000of002-00000": ["a", "c"], "part-s001of002-00000": ["b"]}
    assert not distributed.check_order(out, songs, report, index=lambda p: keys[p.name])
    assert "not in the input's song order" in report.problems[0].reason


class ScriptedLaunch(distributed.Launch):
    """Rank `rank` of 2 whose torch.distributed exchanges return scripted values (the file protocol is real)."""

    def __init__(self, rank: int, *gathered: list):
        super().__init__(distributed.Split(1, 0, 2, rank), timeout_min=0.002, launch_id="test")
        self.gathered = list(gathered)

    def _gather(self, value) -> list:
        return self.gathered.pop(0)

    def close(self) -> None:
        pass


def test_rank_outcomes_reach_rank_0_in_one_line(tmp_path):
    out = tmp_path / "prep"
    main = ScriptedLaunch(0, ["", ""], [True, True])
    main.prepare(out, dry_run=False)
    main.start(out)
    other = ScriptedLaunch(1)
    other.out = out
    other._write_result(distributed.RankResult(1, "failed", error="x.wav: cannot decode audio"))
    with pytest.raises(distributed.AcetuneError, match="rank 1 of 2 failed: x.wav: cannot decode audio"):
        main.finish(Report("t"), rows=3)

    quiet = ScriptedLaunch(0, ["", ""], [True, True])  # rank 1 never ends and no part appears: the timeout
    quiet.prepare(out, dry_run=False)
    quiet.start(out)
    start = time.monotonic()
    with pytest.raises(distributed.AcetuneError, match=r"rank\(s\) 1 of 2 have not finished .*\(--rank_timeout sets the wait\)"):
        quiet.finish(Report("t"), rows=3)
    assert time.monotonic() - start < 5

    with pytest.raises(distributed.AcetuneError, match=r"rank 1 of 2 could not start \(no checkpoint\)"):
        ScriptedLaunch(0, ["", "no checkpoint"]).start(out)
    failing = ScriptedLaunch(1, ["", "no checkpoint"])  # the rank that fails before the start tells the others
    with pytest.raises(distributed.UsageError, match="no checkpoint"), failing.guard():
        raise distributed.UsageError("no checkpoint")
    assert failing._ended and not failing.gathered  # exchanged once, waits for nobody
    blind = ScriptedLaunch(0, ["", ""], [True, False])  # rank 1 does not see the output: not a shared disk
    blind.prepare(out, dry_run=False)
    with pytest.raises(distributed.UsageError, match=r"rank\(s\) 1 of 2 cannot see .* disk every machine shares"):
        blind.start(out)
