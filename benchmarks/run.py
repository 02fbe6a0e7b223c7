"""Run every benchmark in this folder and print one table: what, config, figure, unit.

Each benchmark script defines `rows(quick: bool) -> list[(what, config, figure, unit)]` (and still
prints its own, more detailed table when run alone). Scripts that do not define `rows` yet are
adapted here from their measuring functions. The header gives the date and the machine, so the
table can be pasted into docs/benchmarks.md as it is.

    OMP_NUM_THREADS=2 python benchmarks/run.py            # everything (~15 min on 2 cores)
    OMP_NUM_THREADS=2 python benchmarks/run.py --quick    # a fast subset (~3 min)
    python benchmarks/run.py --only codec train           # some of them
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("decode_throughput", "codec", "transformer", "preprocess", "ssl_storage", "train", "full_finetune",
              "bpm_key_accuracy", "demo", "studio_table")
Row = tuple[str, str, float, str]


def load(name: str):
    """Import benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"acetune_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---- adapters for scripts without `rows` ------------------------------------------------------

def _preprocess_rows(module, quick: bool) -> list[Row]:
    """benchmarks/preprocess.py: bytes per audio-second at the official shapes (+ tiny throughput)."""
    os.environ.setdefault("ACETUNE_NO_PROGRESS", "1")
    out: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, mbs in module.official_shapes(root):
            out.append(("preprocess storage", label, mbs, "MB per audio-s"))
        if not quick:
            vocab = HERE.parents[1] / "shared" / "golden" / "lyrics" / "vocab.json"
            if not vocab.is_file():  # a fresh clone: the demo's tiny vocab has the ids the code needs
                from acetune.stages.demo import write_tiny_lyric_vocab

                vocab = root / "vocab.json"
                write_tiny_lyric_vocab(vocab, ["rock pop female vocals"])
            for label, rate, mbs in module.measured(root / "m", 8, 10.0, vocab):
                out += [("preprocess speed", f"{label}, 8 songs x 10 s", rate, "songs/s"),
                        ("preprocess storage", label, mbs, "MB per audio-s")]
    return out


def _train_rows(module, quick: bool) -> list[Row]:
    """benchmarks/train.py: s/step and peak RSS per case (own process each) + the official estimate."""
    import json

    cases = [("tiny", "fp32", "10s")] if quick else module.CASES
    out: list[Row] = []
    for case in cases:
        res = subprocess.run([sys.executable, str(HERE / "train.py"), "--case", *case], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{' '.join(case)}: {res.stderr.strip().splitlines()[-1:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        config = f"{case[0]}, {case[1]}, {case[2]}, LoRA r64, ckpt"
        out += [("train step", config, r["time_s"], "s/step"), ("train peak RSS", config, r["peak_rss_gb"], "GB")]
    for ssl in (True, False):
        terms = module.analytic_official(ssl=ssl)
        total = next((t for t in terms if t[0].startswith("total")), terms[-1])
        config = f"official 3.5B, 360 s, r64, SSL {'on' if ssl else 'off'}"
        out += [("train peak (estimate)", config + ", bf16", total[1], "GB"),
                ("train peak (estimate)", config + ", int8", total[2], "GB")]
    return out


def _demo_rows(quick: bool) -> list[Row]:
    """`acetune demo` end to end, in its own process, in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "acetune", "demo", "--workdir", str(Path(tmp) / "demo")] + (["--quick"] if quick else [])
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, ACETUNE_NO_PROGRESS="1"))
        wall = time.perf_counter() - start
    if res.returncode:
        raise RuntimeError(res.stderr.strip().splitlines()[-1:])
    return [("acetune demo end to end", "quick" if quick else "full (4 songs, 30 steps)", wall, "s")]


ADAPTERS = {"preprocess": _preprocess_rows, "train": _train_rows}


def collect(name: str, quick: bool) -> list[Row]:
    """The rows of one benchmark; a failure becomes one row saying so (the table is still printed)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the table only
            if name == "demo":
                return _demo_rows(quick)
            module = load(name)
            if hasattr(module, "rows"):
                return list(module.rows(quick))
            return ADAPTERS[name](module, quick)
    except Exception as err:  # noqa: BLE001 - report and go on with the other benchmarks
        return [(name, f"failed: {type(err).__name__}: {str(err)[:150]}", math.nan, "")]


# ---- the table ---------------------------------------------------------------------------------

def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{ram}, {gpu}; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def fmt(value: float) -> str:
    if value != value:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["| what | config | figure | unit |", "|---|---|---:|---|"]
    lines += [f"| {what} | {config} | {fmt(figure)} | {unit} |" for what, config, figure, unit in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fast subset of every benchmark")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or BENCHMARKS:
        t0 = time.perf_counter()
        got = collect(name, args.quick)
        print(f"{name}: {len(got)} row(s) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows += got
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"acetune benchmarks{' (--quick)' if args.quick else ''}, {date}, {time.perf_counter() - started:.0f} s")
    print(f"machine: {machine()}\n")
    print(table(rows))
    return 1 if any(r[2] != r[2] and r[1].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
