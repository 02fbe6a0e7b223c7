"""Fetch model sets from the Hugging Face Hub by short name (or repo id), then check each one.

Downloads go into the standard HF cache (HF_HOME / HF_HUB_CACHE; what you already have is reused)
or into --local_dir. Large files resume where an interrupted download stopped and are checked
against the Hub's sha256. After each download, the result is checked: ACE-Step v1 by `acetune
doctor`, ACE-Step 1.5 by its family's layout check, MERT / mHuBERT / Qwen2.5-Omni by their config's
model type, so a repo that is not the model you asked for is named at once. See docs/hub.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from acetune import hub
from acetune.cli import arg
from acetune.errors import CheckpointError, DownloadError, UsageError

EXAMPLES = """examples:
  acetune download --list                             # the short names and their repos
  acetune download v1                                 # ACE-Step/ACE-Step-v1-3.5B into the HF cache
  acetune download acestep15-xl-sft --local_dir ./acestep-v15-xl-sft
  acetune download v1 mert mhubert                    # everything v1 preprocess can use
  acetune download ACE-Step/ACE-Step-v1-3.5B@main     # any repo id, optionally @branch/tag/commit
"""

# config.json `model_type` of the non-ACE-Step models in the table
MODEL_TYPES = {"mert": ("mert_model",), "mhubert": ("hubert",), "qwen-omni": ("qwen2_5_omni",)}


@dataclass
class Args:
    names: list[str] = arg(default_factory=list, positional=True, metavar="NAME",
                           help="short names (see --list) or Hub repo ids, each optionally @revision")
    local_dir: Path | None = arg(None, help="download into this folder instead of the HF cache (several names: "
                                            "one sub-folder each)")
    revision: str = arg("", help="branch, tag or commit for every name (default: each name's own, else main)")
    show_list: bool = arg(False, help="print the short names and their Hub repos, then stop", aliases=("--list",))
    check: bool = arg(True, help="check each download (doctor / layout / model type); --no-check skips it")

    def __post_init__(self):
        self.names = list(self.names or [])
        self.local_dir = None if self.local_dir in (None, "") else Path(self.local_dir)
        if not self.names and not self.show_list:
            raise UsageError("name at least one model to download", fix="run `acetune download --list` for the names")
        unknown = [n for n in self.names if not hub.is_hub_ref(n)]
        if unknown:
            raise UsageError(f"unknown model name {unknown[0]!r}",
                             fix=f"use a short name ({', '.join(hub.MODELS)}) or a Hub repo id like owner/name")


def print_table() -> None:
    width = max(len(n) for n in hub.MODELS)
    for name, model in hub.MODELS.items():
        pin = f" @{model.revision[:12]}" if model.revision else ""
        print(f"{name.ljust(width)}  {model.repo_id}{pin}  ({model.about})")


def verify(path: Path, kind: str | None, label: str) -> int:
    """Check one download; 0 when it is the model it should be. Prints what it found."""
    from acetune.models.family import family_names, get_family

    found = next((n for n in family_names() if get_family(n).detect(path)), None)
    if kind in family_names() and found != kind:
        raise DownloadError(f"{label} does not hold an {kind} checkpoint (found: "
                            f"{', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'nothing'})",
                            path=path, fix="check the repo id; `acetune download --list` shows the official ones")
    kind = kind or found
    if kind == "ace-step-v1":
        from acetune.stages import doctor

        return doctor.run(doctor.Args(checkpoint_dir=path))
    if kind in family_names():
        get_family(kind).check_checkpoint(path)
        print(f"{label}: {kind} checkpoint layout complete")
        return 0
    if kind in MODEL_TYPES:
        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if model_type not in MODEL_TYPES[kind]:
            raise DownloadError(f"{label} is not a {kind} model (config.json model_type {model_type!r}, expected "
                                f"{' or '.join(MODEL_TYPES[kind])})", path=path, fix="check the repo id")
        print(f"{label}: {kind} model ({model_type})")
        return 0
    print(f"{label}: not an ACE-Step checkpoint or a known helper model; downloaded without a check")
    return 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args: Args) -> int:
    if args.show_list:
        print_table()
        return 0
    code = 0
    for name in args.names:
        repo_id, revision = hub.parse_ref(name)
        entry = hub.MODELS.get(name.partition("@")[0])
        local_dir = args.local_dir
        if local_dir is not None and len(args.names) > 1:
            local_dir = local_dir / repo_id.split("/")[-1]
        start = time.monotonic()
        print(f"download: {name} -> {repo_id} into {local_dir or hub.hub_cache_dir()}", file=sys.stderr)
        source = hub.fetch(repo_id, revision=args.revision or revision, all_files=True, local_dir=local_dir,
                           flag="")
        seconds = time.monotonic() - start
        print(f"{name}: {repo_id}@{source.commit or '?'} -> {source.path} ({_size(source.path) / 1e9:.2f} GB, "
              f"{seconds:.1f} s)")
        sys.stdout.flush()
        if args.check:
            try:
                code = max(code, verify(source.path, entry.kind if entry else None, f"{repo_id}@{(source.commit or '')[:12]}"))
            except CheckpointError as err:
                raise DownloadError(f"{repo_id} is not a usable checkpoint: {err.reason}", path=err.path,
                                    fix="check the repo id, or report the repo to its authors") from None
    return code
