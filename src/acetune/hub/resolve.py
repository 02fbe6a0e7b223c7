"""Turn a model flag's value (folder, Hub repo id or short name, optionally `@revision`) into a local folder.

A value that is an existing path is used as it is. Otherwise it names a Hub repo: a short name from
`MODELS`, or `owner/name`, either optionally followed by `@revision` (branch, tag or commit). The
repo is fetched with `huggingface_hub.snapshot_download` into the standard HF cache (`HF_HOME`,
`HF_HUB_CACHE`), so files a user already has are reused, and only the files the stage needs
(`stage_components`): training reads the transformer, preprocess the codec and text encoder. Large
files go through `transfer.fetch_large_files` first, which resumes a download interrupted in an
earlier run. `HF_HUB_OFFLINE=1` or `offline=True` reads the cache only. Every Hub failure becomes one
line with the fix (`DownloadError`). The commit actually used is in `Source.record()`, which the stages
write into the dataset metadata and the run config.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from acetune.errors import CheckpointError, DownloadError, UsageError


@dataclass(frozen=True)
class HubModel:
    """One entry of the short-name table."""

    repo_id: str
    kind: str  # a model family name, or "mert" / "mhubert" / "qwen-omni"
    about: str
    revision: str | None = None  # pinned commit: the default for repos whose own code runs (MERT)


# The model sets acetune uses, by short name (`acetune download NAME`, or any model flag).
MODELS: dict[str, HubModel] = {
    "v1": HubModel("ACE-Step/ACE-Step-v1-3.5B", "ace-step-v1", "ACE-Step v1 3.5B, the four component folders"),
    "acestep15-turbo": HubModel("ACE-Step/acestep-v15-turbo-diffusers", "acestep15", "ACE-Step 1.5 2B turbo"),
    "acestep15-base": HubModel("ACE-Step/acestep-v15-base-diffusers", "acestep15", "ACE-Step 1.5 2B base"),
    "acestep15-sft": HubModel("ACE-Step/acestep-v15-sft-diffusers", "acestep15", "ACE-Step 1.5 2B sft"),
    "acestep15-xl-turbo": HubModel("ACE-Step/acestep-v15-xl-turbo-diffusers", "acestep15", "ACE-Step 1.5 XL turbo"),
    "acestep15-xl-base": HubModel("ACE-Step/acestep-v15-xl-base-diffusers", "acestep15", "ACE-Step 1.5 XL base"),
    "acestep15-xl-sft": HubModel("ACE-Step/acestep-v15-xl-sft-diffusers", "acestep15", "ACE-Step 1.5 XL sft"),
    # MERT's modelling code lives in the repo: it runs only with --trust_remote_code, from this commit.
    "mert": HubModel("m-a-p/MERT-v1-330M", "mert", "MERT-v1-330M SSL targets (v1 preprocess --mert_dir)",
                     revision="d0726b6fb4a38bf75927541664191620a7d15d3b"),
    "mhubert": HubModel("utter-project/mHuBERT-147", "mhubert", "mHuBERT-147 SSL targets (--mhubert_dir)"),
    "qwen-omni": HubModel("Qwen/Qwen2.5-Omni-7B", "qwen-omni", "Qwen2.5-Omni 7B captioner (bf16)"),
    "qwen-omni-gptq": HubModel("Qwen/Qwen2.5-Omni-7B-GPTQ-Int4", "qwen-omni",
                               "Qwen2.5-Omni 7B captioner, GPTQ int4 (needs acetune[gptq])"),
}

# Always fetched: configs, tokenizer tables, model_index.json (small; they say what the repo is).
SMALL_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
# Other frameworks' copies of the weights, never needed.
OTHER_FORMATS = ["*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ckpt", "*.tflite", "*.ot", "*.gguf",
                 "flax_model*", "tf_model*", "rust_model*", "*.mlmodel", "*.mlpackage/*"]
PICKLES = ["*.bin", "*.pt", "*.pth"]  # skipped whenever the same repo part has .safetensors
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Source:
    """Where a model or dataset came from: `path` on disk, and for a Hub repo its id and commit."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # as asked (branch, tag, commit); None = the default branch
    commit: str | None = None  # the commit the files are from
    repo_type: str = "model"

    def record(self) -> dict:
        """JSON-able provenance, written into dataset metadata and run configs."""
        if self.repo_id is None:
            return {"path": str(self.path)}
        return {"repo_id": self.repo_id, "repo_type": self.repo_type, "revision": self.revision or "main",
                "commit": self.commit}

    def __str__(self) -> str:
        return str(self.path) if self.repo_id is None else f"{self.repo_id}@{(self.commit or '?')[:12]}"


def parse_ref(value) -> tuple[str, str | None] | None:
    """(repo id, revision or None) if `value` names a Hub repo, None if it is (or looks like) a local path."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or os.path.exists(text):
        return None
    name, _, revision = text.replace("\\", "/").partition("@")  # Path() on Windows turns "/" into "\\"
    if name in MODELS:
        return MODELS[name].repo_id, revision or MODELS[name].revision
    if _REPO_ID.fullmatch(name) and not name.startswith("."):
        return name, revision or None
    return None


def is_hub_ref(value) -> bool:
    return parse_ref(value) is not None


def stage_components(family: str, stage: str) -> tuple[str, ...] | None:
    """The component folders `stage` reads for `family`; None means all of them.

    Training reads the transformer (1.5: plus the two condition-encoder tensors it carries); preprocess
    the codec and text encoder (1.5: the condition encoder too, which packs text and lyrics).
    """
    # imported here: the layouts pull in diffusers, which `acetune download` does not otherwise need
    from acetune.layout import V1_DCAE_DIR, V1_TEXT_ENCODER_DIR, V1_TRANSFORMER_DIR, V1_VOCODER_DIR
    from acetune.models.v15 import layout as v15

    table = {
        "ace-step-v1": {"train": (V1_TRANSFORMER_DIR,), "preprocess": (V1_DCAE_DIR, V1_VOCODER_DIR, V1_TEXT_ENCODER_DIR)},
        "acestep15": {"train": (v15.TRANSFORMER_DIR, v15.CONDITION_ENCODER_DIR),
                      "preprocess": (v15.VAE_DIR, v15.TEXT_ENCODER_DIR, v15.TOKENIZER_DIR, v15.CONDITION_ENCODER_DIR,
                                     v15.SCHEDULER_DIR)},
    }
    return table.get(family, {}).get(stage)


def hub_cache_dir() -> Path:
    """The HF hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME") or constants.HF_HOME
    return Path(home).expanduser() / "hub"


def offline_mode(offline: bool = False) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _patterns(paths: list[str], components: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns: small files plus `components` (all if None), no duplicate weight formats."""
    allow = None if components is None else SMALL_FILES + [f"{c}/*" for c in components]
    ignore = list(OTHER_FORMATS)
    if any(p.endswith(".safetensors") for p in paths):
        ignore += PICKLES
    return allow, ignore


def resolve_model(value, *, stage: str = "all", revision: str | None = None, offline: bool = False,
                  flag: str = "--checkpoint_dir", trust_remote_code: bool = False) -> Source:
    """A local folder for a model flag's value, downloading from the Hub if it names a repo.

    Args:
        value: an existing folder, `owner/name`, a `MODELS` short name, optionally with `@revision`.
        stage: "train", "preprocess" or "all"; picks the component folders fetched (`stage_components`).
        revision: overrides an `@revision` in `value` (the stage's `--revision` flag).
        offline: read the HF cache only (also when HF_HUB_OFFLINE is set).
        flag: the flag that named it, for error messages.
        trust_remote_code: the stage allows repo code to run; a repo with `auto_map` then needs a pinned
            commit (a 40-hex revision; the short-name table pins MERT's).
    Raises:
        CheckpointError: not a folder and not a Hub repo id. DownloadError: the Hub could not provide it.
    """
    if value is not None and Path(str(value)).exists():
        return Source(path=Path(str(value)))
    ref = parse_ref(value)
    if ref is None:
        raise CheckpointError("folder not found", path=str(value),
                              fix=f"pass an existing folder or a Hub repo id (e.g. ACE-Step/ACE-Step-v1-3.5B) to {flag}")
    repo_id, asked = ref
    asked = revision or asked
    # First the small files, which say what the repo holds; then the components this stage reads.
    head = fetch(repo_id, revision=asked, offline=offline, allow=SMALL_FILES, flag=flag)
    components = None
    family = _detect_family(head.path)
    if family is not None:
        components = stage_components(family, stage)
    source = fetch(repo_id, revision=head.commit or asked, offline=offline, components=components, flag=flag,
                   all_files=components is None)
    source.revision = asked
    _check_remote_code(source, trust_remote_code, flag)
    return source


def _detect_family(folder: Path) -> str | None:
    from acetune.models.family import family_names, get_family

    for name in family_names():
        if get_family(name).detect(folder):
            return name
    return None


def _check_remote_code(source: Source, trust_remote_code: bool, flag: str) -> None:
    """Repo code runs only from a commit that cannot change under us."""
    try:
        config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not (isinstance(config, dict) and config.get("auto_map")) or not trust_remote_code:
        return  # without the flag, the loader refuses the code itself (one line, naming the flag)
    if not (source.revision and _COMMIT.fullmatch(source.revision)):
        raise UsageError(f"{source.repo_id} runs its own Python code; acetune runs it only from a pinned commit",
                         fix=f"read the code at https://huggingface.co/{source.repo_id}, then pass "
                             f"{flag} {source.repo_id}@{source.commit} (the commit you read)")


def fetch(repo_id: str, *, repo_type: str = "model", revision: str | None = None, offline: bool = False,
          allow: list[str] | None = None, components: tuple[str, ...] | None = None, all_files: bool = False,
          local_dir: str | os.PathLike | None = None, select=None, flag: str = "--checkpoint_dir") -> Source:
    """Download (or find in the cache) the selected files of a Hub repo; returns where they are.

    Selection: `allow` patterns, or `components` folders plus the small files, or everything
    (`all_files`), always without other frameworks' weights; `select(paths) -> paths` narrows further
    (datasets: one split). Large files are fetched resumably first (`transfer.fetch_large_files`).
    """
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    offline = offline_mode(offline)
    cache_dir = hub_cache_dir()
    kw = dict(repo_type=repo_type, cache_dir=str(cache_dir))
    try:
        if offline:
            listing = get_cached_repo_tree(repo_id, revision=revision, local_dir=local_dir, **kw)
            commit = None
        else:
            api = HfApi(endpoint=_endpoint())
            commit = revision if revision and _COMMIT.fullmatch(revision) else api.repo_info(
                repo_id, repo_type=repo_type, revision=revision).sha
            listing = [f for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=commit, recursive=True)
                       if hasattr(f, "size")]
        paths = [f.path for f in listing]
        allow_p, ignore_p = _patterns(paths, None if all_files else components)
        if allow is not None:
            allow_p = allow
        wanted = list(filter_repo_objects(paths, allow_patterns=allow_p, ignore_patterns=ignore_p))
        if select is not None:
            wanted = select(wanted)
            allow_p, ignore_p = wanted, None
        if not offline:
            from acetune.hub.transfer import fetch_large_files

            fetch_large_files(repo_id, repo_type, commit, [f for f in listing if f.path in set(wanted)],
                              cache_dir=cache_dir, local_dir=local_dir, endpoint=_endpoint())
        # The asked revision (not the commit), so the cache records the branch -> commit ref offline mode reads.
        path = snapshot_download(repo_id, revision=revision, allow_patterns=allow_p,
                                 ignore_patterns=ignore_p, local_dir=local_dir, local_files_only=offline,
                                 endpoint=_endpoint(), **kw)
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes one line below
        raise hub_error(err, repo_id, repo_type, revision, offline, flag) from None
    path = Path(path)
    if path.parent.name == "snapshots":
        commit = path.name
    return Source(path=path, repo_id=repo_id, revision=revision, commit=commit, repo_type=repo_type)


def hub_error(err: Exception, repo_id: str, repo_type: str, revision: str | None, offline: bool,
              flag: str) -> Exception:
    """One line with the fix for a Hub failure (the token is never part of it)."""
    from huggingface_hub import errors as hf

    if isinstance(err, DownloadError | UsageError | CheckpointError):
        return err
    kind = "dataset" if repo_type == "dataset" else "model"
    url = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if isinstance(err, hf.GatedRepoError):
        return DownloadError(f"{repo_id} is a gated {kind}: your account has not been granted access",
                             fix=f"accept its terms at {url}, then {login}")
    if isinstance(err, hf.RepositoryNotFoundError):
        hint = " or `acetune download --list` for short names" if kind == "model" else ""
        return DownloadError(f"no {kind} repo {repo_id!r} on the Hub (or it is private)",
                             fix=f"check the spelling{hint}"
                                 + (f"; for a local folder check {flag} exists" if flag.startswith("--") else "")
                                 + f"; for a private repo {login}")
    if isinstance(err, hf.RevisionNotFoundError):
        return DownloadError(f"{repo_id} has no revision {revision!r}",
                             fix=f"pass a branch, tag or commit listed at {url}/commits/main")
    if isinstance(err, hf.CachedRepoTreeNotFoundError | hf.LocalEntryNotFoundError | hf.OfflineModeIsEnabled) \
            or (offline and isinstance(err, FileNotFoundError)):
        why = "offline mode is on (--offline / HF_HUB_OFFLINE)" if offline else "the Hub cannot be reached"
        return DownloadError(f"{repo_id} is not (completely) in the HF cache {hub_cache_dir()} and {why}",
                             fix=f"run `acetune download {repo_id}` once with a network connection"
                                 + (f", or pass a local folder to {flag}" if flag.startswith("--") else ""))
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(f"disk full while downloading {repo_id} into {hub_cache_dir()}",
                             fix="free some space (the partial file is kept and resumed) or set HF_HOME "
                                 "to a bigger disk")
    name = err.__class__.__name__
    if "Connect" in name or "Timeout" in name or "Network" in name:
        return DownloadError(f"cannot reach the Hub at {_endpoint()} to fetch {repo_id} ({name})",
                             fix="check your connection (finished files are kept; rerun to resume), "
                                 "or set HF_HUB_OFFLINE=1 to use what is cached")
    return DownloadError(f"downloading {repo_id} failed ({name}: {str(err).splitlines()[0][:200] if str(err) else ''})",
                         fix="rerun the command to resume; ACETUNE_DEBUG=1 shows the details")


def resolve_args(args, **stages: str) -> dict[str, dict]:
    """Resolve a stage's model flags in place: `resolve_args(args, checkpoint_dir="preprocess", mert_dir="all")`.

    Each named field of `args` that names a Hub repo becomes the local folder (local paths stay as they are); `args.revision` (if the stage has
    it) applies to `checkpoint_dir` / `model_path`, `args.offline` and `args.trust_remote_code` to all.
    Returns {field: Source.record()} for the dataset metadata / run config.
    """
    records = {}
    for name, stage in stages.items():
        value = getattr(args, name, None)
        if value in (None, ""):
            continue
        if parse_ref(value) is None:  # a local path (present or not): the stage's own checks name the problem
            records[name] = Source(path=Path(str(value))).record()
            continue
        revision = (getattr(args, "revision", "") or None) if name in ("checkpoint_dir", "model_path") else None
        source = resolve_model(value, stage=stage, revision=revision, offline=bool(getattr(args, "offline", False)),
                               flag=f"--{name}", trust_remote_code=bool(getattr(args, "trust_remote_code", False)))
        setattr(args, name, source.path if isinstance(value, Path) else str(source.path))
        records[name] = source.record()
    return records
