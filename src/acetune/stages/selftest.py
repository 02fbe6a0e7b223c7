"""Check this implementation against golden reference vectors.

Runs every golden case whose folder exists under --golden (a folder laid out like
../shared/golden), prints one row per case and tensor (metric, value, tolerance, pass), and
exits non-zero if any row fails. Slow cases (full-size models) run only with --slow or --only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from acetune.cli import arg
from acetune.errors import UsageError
from acetune.parity.registry import Row, load_case_modules

EXAMPLES = """examples:
  acetune selftest --golden ../shared/golden
  acetune selftest --golden ../shared/golden --only v1_transformer_tiny
  acetune selftest --golden ../shared/golden --slow   # also the full-size cases (~14 GB RAM)
"""


@dataclass
class Args:
    golden: Path = arg(help="folder laid out like ../shared/golden")
    only: list[str] | None = arg(None, help="run only these cases (names as listed by --list)")
    slow: bool = arg(False, help="also run slow cases (full-size models)")
    list_cases: bool = arg(False, help="list the cases and whether their folder exists, then exit", aliases=("--list",))


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'case':<28} {'tensor':<52} {'metric':<7} {'value':>11} {'tol':>9}  pass"]
    for r in rows:
        lines.append(f"{r.case:<28} {r.tensor[:52]:<52} {r.metric:<7} {r.value:>11.3e} {r.tolerance:>9.1e}  "
                     f"{'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def run(args: Args) -> int:
    golden = Path(args.golden)
    if not golden.is_dir():
        raise UsageError("golden folder not found", path=golden, fix="pass --golden pointing at ../shared/golden")
    cases = load_case_modules()
    if args.list_cases:
        for c in cases.values():
            print(f"{c.name:<28} {'present' if c.available(golden) else 'missing'}{'  (slow)' if c.slow else ''}")
        return 0
    unknown = sorted(set(args.only or ()) - set(cases))
    if unknown:
        raise UsageError(f"unknown case(s): {', '.join(unknown)}", fix="see `acetune selftest --golden DIR --list`")
    selected = [c for c in cases.values() if (c.name in args.only if args.only else not c.slow or args.slow)]
    rows: list[Row] = []
    ran = 0
    for c in selected:
        if not c.available(golden):
            print(f"skip {c.name}: {golden / c.folder} not found", file=sys.stderr)
            continue
        rows += c.fn(golden)
        ran += 1
    print(format_rows(rows))
    failed = [r for r in rows if not r.passed]
    print(f"{ran} case(s), {len(rows)} tensor(s): {len(rows) - len(failed)} passed, {len(failed)} failed")
    if ran == 0:
        print("no golden case found in that folder", file=sys.stderr)
        return 1
    return 1 if failed else 0
