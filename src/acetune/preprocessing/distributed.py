"""Preprocess on many processes: which songs a process encodes, and how the ranks of one launch meet.

One rule splits the work, whoever asks for it: the unique songs, in the input's order, are cut into
contiguous blocks (`datasets.Dataset.shard(contiguous=True)`).

- A scheduler (SLURM array jobs): `--num_shards N --shard_index i`, one job per shard.
- A launcher (`accelerate launch`, `torchrun`): W processes; world size and rank come from
  accelerate's `PartialState`, and rank r encodes block r of the shard.

Block r of shard i is block i·W + r of N·W and its parts are named `part-s<i·W+r>of<N·W>-<n>`, so a
dataset reads its blocks, and their parts, in name order = song order: an output made by any split
into one folder holds the rows of a one-process run in the same order (windows of a song in window
order), as long as every run that wrote into it used the same split.

A launch (W > 1) runs in four steps:
1. every rank reads the songs and loads its encoders; rank 0 alone prepares the output (checks the
   settings, deletes the launch's temp parts, drops rows of changed songs, writes the metadata and a
   launch folder `parts/.launch-<tag>-<id>/`);
2. start: the ranks exchange "ready" or their one-line error (torch.distributed collective; gloo on
   the CPU), then check that each sees rank 0's launch folder (the output must be on a shared disk);
3. each rank encodes its block into its own parts, resumable as in one process;
4. end: a rank writes `rank-<r>.json` (rows, counters, problems, or its error) into the launch folder
   and waits for the others' files, then meets them at a torch.distributed barrier; rank 0 checks
   the row order and prints one summary of all ranks. The wait polls files, not a collective,
   because a collective's timeout cannot tell a slow rank from a stuck one: here the timeout counts
   only time in which no rank finished a part.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch

from acetune.dataset import schema
from acetune.errors import AcetuneError, UsageError
from acetune.preprocessing import store
from acetune.report import Problem, Report

WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # accelerate's list
TEST_KILL_VAR = "ACETUNE_TEST_KILL_RANK"  # tests only: "<rank>:<parts>" SIGKILLs that rank after that many parts
POLL_SECONDS = 0.5
# counters that add up over ranks (the others are the same on every rank, or derived at the end)
SUMMED = ("songs in this shard", "already done (skipped)", "songs encoded", "audio encoded (s)")
_FIX_RERUN = "the finished parts of every rank are kept: once that is fixed, run the same command again"


def contiguous(items: list, num_shards: int, index: int) -> list:
    """Block `index` of `num_shards` contiguous blocks of `items` (`datasets.Dataset.shard` decides the cut)."""
    from datasets import Dataset

    if num_shards == 1:
        return items
    picked = Dataset.from_dict({"i": list(range(len(items)))}).shard(num_shards, index, contiguous=True)["i"]
    return [items[i] for i in picked]


@dataclass(frozen=True)
class Split:
    """Which songs this process encodes: scheduler shard i of N, launcher rank r of W."""

    num_shards: int = 1
    shard_index: int = 0
    world_size: int = 1
    rank: int = 0

    @property
    def blocks(self) -> int:
        return self.num_shards * self.world_size

    @property
    def block(self) -> int:
        return self.shard_index * self.world_size + self.rank

    @property
    def tag(self) -> str:
        """This process's part-name tag (`s003of008`); one process: `s000of001`, as before launches existed."""
        return store.shard_tag(self.blocks, self.block)

    def launch_tags(self) -> list[str]:
        """The tags of every rank of this launch (rank 0 cleans up after all of them)."""
        first = self.shard_index * self.world_size
        return [store.shard_tag(self.blocks, first + r) for r in range(self.world_size)]

    def shard_songs(self, songs: list) -> list:
        """The songs of this launch (all its ranks)."""
        return contiguous(songs, self.num_shards, self.shard_index)

    def rank_songs(self, songs: list) -> list:
        """The songs this process encodes."""
        return contiguous(self.shard_songs(songs), self.world_size, self.rank)

    def settings(self) -> dict:
        """The split as the metadata records it (run-only settings: other splits may resume the output)."""
        return {"num_shards": self.blocks, "shard_index": self.block}


def launched_world_size() -> int:
    for name in WORLD_SIZE_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


@dataclass
class RankResult:
    """What one rank tells the others when it ends."""

    rank: int
    status: str  # "done", "stopped" (Ctrl-C / SIGTERM) or "failed"
    rows: int = 0
    error: str = ""
    counters: dict | None = None
    problems: list | None = None


class Launch:
    """The ranks of one `accelerate launch` / `torchrun` run; with one process every step is a no-op."""

    def __init__(self, split: Split, timeout_min: float = 30.0, device: torch.device | None = None,
                 launch_id: str = ""):
        self.split = split
        self.timeout_s = timeout_min * 60
        self.device = device  # the launcher's device for this rank (None: --device decides)
        self.launch_id = launch_id
        self.out: Path | None = None
        self._started = False
        self._ended = False
        self._parts = 0

    @classmethod
    def from_env(cls, num_shards: int, shard_index: int, device_flag: str, timeout_min: float) -> Launch:
        """A launch from accelerate's PartialState when a launcher started several processes, else one process."""
        if launched_world_size() <= 1:
            return cls(Split(num_shards, shard_index), timeout_min)
        import torch.distributed as dist
        from accelerate import PartialState

        cpu = device_flag == "cpu" or not torch.cuda.is_available()
        state = PartialState(cpu=cpu, timeout=timedelta(minutes=timeout_min))
        box = [uuid.uuid4().hex[:12]]
        dist.broadcast_object_list(box, src=0)  # every rank learns rank 0's launch id
        return cls(Split(num_shards, shard_index, state.num_processes, state.process_index), timeout_min,
                   state.device if device_flag == "auto" else None, box[0])

    @property
    def distributed(self) -> bool:
        return self.split.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.split.rank == 0

    def folder(self, out: Path) -> Path:
        return store.parts_root(out) / f".launch-{self.split.launch_tags()[0]}-{self.launch_id}"

    def rank_name(self, rank: int | None = None) -> str:
        return f"rank {self.split.rank if rank is None else rank} of {self.split.world_size}"

    # ---- step 1: rank 0 prepares the output ------------------------------------------------------
    def prepare(self, out: Path, dry_run: bool) -> None:
        """Rank 0, after it prepared the output: delete the launch's temp parts and old launch folders."""
        self.out = out
        if not self.distributed:
            store.recover(out, self.split.tag)
            return
        for tag in self.split.launch_tags():
            store.recover(out, tag)
        if dry_run:
            return
        root = store.parts_root(out)
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob(f".launch-{self.split.launch_tags()[0]}-*"):  # a killed launch's
            shutil.rmtree(old, ignore_errors=True)
        self.folder(out).mkdir()

    # ---- step 2: start -----------------------------------------------------------------------------
    def start(self, out: Path, dry_run: bool = False) -> None:
        """All ranks: wait until every rank is ready; one rank's error stops all of them."""
        self.out = out
        self._exchange_start("")
        if dry_run or not self.distributed:
            return
        visible = self._gather(self.folder(out).is_dir())
        if not all(visible):  # every rank stops here, none waits for the others
            self._ended = True
            blind = [r for r, ok in enumerate(visible) if not ok]
            raise UsageError(f"rank(s) {', '.join(map(str, blind))} of {self.split.world_size} cannot see the "
                             f"launch folder rank 0 made in --output_name", path=out,
                             fix="put --output_name on a disk every machine shares, or run one --shard_index per "
                                 "machine and --merge the outputs (docs/preprocess.md)")

    def _exchange_start(self, error: str) -> None:
        if not self.distributed or self._started:
            return
        self._started = True
        errors = self._gather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if failed:
            self._ended = True  # nothing to wait for: no rank encodes
        if failed and not error:
            r, e = failed[0]
            raise AcetuneError(f"{self.rank_name(r)} could not start ({e})",
                               fix="fix that, then run the same command again")

    def _gather(self, value) -> list:
        import torch.distributed as dist

        values = [None] * self.split.world_size
        dist.all_gather_object(values, value)
        return values

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Any error on this rank reaches the others (at the start exchange or through its result file)."""
        try:
            yield
        except BaseException as err:
            if self.distributed:
                line = err.line() if isinstance(err, AcetuneError) else f"{err.__class__.__name__}: {err}"
                if not self._started:
                    self._exchange_start(line or err.__class__.__name__)
                elif not self._ended:
                    stopped = isinstance(err, KeyboardInterrupt)
                    self._write_result(RankResult(self.split.rank, "stopped" if stopped else "failed", error=line))
                    if not stopped:  # let the others finish their blocks (a launcher kills all once one exits)
                        with suppress(AcetuneError, OSError, ValueError):
                            self._wait_for_results()
            raise
        finally:
            self.close()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # ---- step 3: the work --------------------------------------------------------------------------
    def part_written(self) -> None:
        """After each written part (a test can SIGKILL a rank here, the way a crash or the OOM killer does)."""
        self._parts += 1
        hook = os.environ.get(TEST_KILL_VAR, "")
        if hook and hook == f"{self.split.rank}:{self._parts}":
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- step 4: end -------------------------------------------------------------------------------
    def finish(self, report: Report, rows: int, stopped: bool = False) -> list[RankResult]:
        """Tell the others this rank ended; unless stopped, wait for all and return every rank's result.

        Raises one line if another rank failed, was stopped, or made no progress for the timeout."""
        mine = RankResult(self.split.rank, "stopped" if stopped else "done", rows,
                          counters={k: v for k, v in report.counters.items() if k in SUMMED},
                          problems=[asdict(p) for p in report.problems])
        if not self.distributed:
            return [mine]
        self._write_result(mine)
        if stopped:
            return [mine]
        results = self._wait_for_results()
        bad = [r for r in results if r.status != "done"]
        if bad:
            r = bad[0]
            what = f"failed: {r.error}" if r.status == "failed" else f"was stopped ({r.error or 'signal'})"
            raise AcetuneError(f"{self.rank_name(r.rank)} {what}", fix=_FIX_RERUN)
        import torch.distributed as dist

        dist.barrier()  # everyone is done: quick
        return results

    def _write_result(self, result: RankResult) -> None:
        self._ended = True
        if self.out is None or not self.folder(self.out).is_dir():
            return
        path = self.folder(self.out) / f"rank-{result.rank:03d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
        os.replace(tmp, path)

    def _wait_for_results(self) -> list[RankResult]:
        folder = self.folder(self.out)
        tags = self.split.launch_tags()
        last_progress, last_parts = time.monotonic(), -1
        while True:
            found = {p.name for p in folder.glob("rank-*.json")}
            results = [folder / f"rank-{r:03d}.json" for r in range(self.split.world_size)]
            if all(p.name in found for p in results):
                return [RankResult(**json.loads(p.read_text(encoding="utf-8"))) for p in results]
            parts = sum(1 for p in schema.part_dirs(self.out) if any(f"-{t}-" in p.name for t in tags))
            if parts != last_parts:
                last_progress, last_parts = time.monotonic(), parts
            elif time.monotonic() - last_progress > self.timeout_s:
                missing = [r for r in range(self.split.world_size) if results[r].name not in found]
                raise AcetuneError(
                    f"rank(s) {', '.join(map(str, missing))} of {self.split.world_size} have not finished and no "
                    f"rank wrote a part for {self.timeout_s / 60:g} min", path=self.out,
                    fix="check those ranks' logs (stuck or killed?), stop the launch, and run the same command "
                        "again: finished parts are kept (--rank_timeout sets the wait)")
            time.sleep(POLL_SECONDS)

    def combine(self, report: Report, results: list[RankResult]) -> int:
        """Rank 0: add the other ranks' counters and problems to `report`; returns the rows all ranks wrote."""
        for r in results:
            if r.rank == self.split.rank:
                continue
            for name, value in (r.counters or {}).items():
                report.count(name, value)
            have = set(report.problems)
            for p in r.problems or []:
                if Problem(**p) not in have:  # problems of the input are found by every rank
                    report.problems.append(Problem(**p))
        return sum(r.rows for r in results)

    def cleanup(self) -> None:
        if self.distributed and self.is_main and self.out is not None:
            shutil.rmtree(self.folder(self.out), ignore_errors=True)


def check_order(out: Path, songs: list, report: Report, index: Callable[[Path], list[str]] | None = None) -> bool:
    """Warn if the output's rows (parts in name order) are not in the input's song order."""
    index = index or store.index_rows_of_part
    position = {song.keys: i for i, song in enumerate(songs)}
    seen = [position.get(k, len(songs)) for part in schema.part_dirs(out) for k in index(part)]
    in_order = all(a <= b for a, b in zip(seen, seen[1:]))
    if not in_order:
        report.warning(out, "rows are not in the input's song order (the output was resumed with another split, "
                       "or changed songs were encoded again)",
                       "nothing to do: training draws songs at random; a new --output_name gives the input order")
    return in_order
