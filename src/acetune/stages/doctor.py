"""Check an ACE-Step v1 checkpoint folder before a long run, without loading its weights.

For each of the four component folders (ace_step_transformer/, music_dcae_f8c8/, music_vocoder/,
umt5-base/): the files are present, config.json parses and describes the right class, every
stored key exists in our model built from that config (on the meta device: no memory) with the
same shape and nothing is missing, the safetensors headers are intact (not truncated) and what
dtype the tensors are stored in. Also: whether each config equals the official 3.5B release,
the lyric vocab, free disk and GPU memory. Prints what would be loaded, then one line per problem
with its fix; exit code 1 if there is any problem. See docs/doctor.md.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acetune import hub
from acetune.cli import arg
from acetune.errors import UsageError
from acetune.layout import (
    CONFIG_FILE,
    V1_DCAE_DIR,
    V1_TEXT_ENCODER_DIR,
    V1_TRANSFORMER_DIR,
    V1_VOCODER_DIR,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
)

EXAMPLES = """examples:
  acetune doctor --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B     # a Hub id: checks the cached download
  acetune doctor --checkpoint_dir ACE-Step-v1-3.5B
  acetune doctor --checkpoint_dir ACE-Step-v1-3.5B --output_dir runs/   # also check free space there
"""

MIN_FREE_GB = 10.0  # checkpoints, validation audio and a preprocessed dataset of a few hours fit in this
OFFICIAL_UMT5 = {"d_model": 768, "num_layers": 12}  # google/umt5-base, what the official folder holds
_SHOW = 3  # keys listed per kind of key problem
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class Args:
    checkpoint_dir: Path = arg(help="the ACE-Step v1 checkpoint folder (holds ace_step_transformer/, "
                                    "music_dcae_f8c8/, music_vocoder/ and umt5-base/), or its Hub id (fetched)")
    output_dir: Path | None = arg(None, help="also check the free space where runs and datasets will go")

    def __post_init__(self):
        self.checkpoint_dir = Path(self.checkpoint_dir)
        self.output_dir = None if self.output_dir in (None, "") else Path(self.output_dir)
        if not self.checkpoint_dir.is_dir() and not hub.is_hub_ref(self.checkpoint_dir):
            raise UsageError("checkpoint folder not found", path=self.checkpoint_dir,
                             fix="pass the folder you downloaded ACE-Step/ACE-Step-v1-3.5B into")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)  # what would be loaded / facts
    problems: list[str] = field(default_factory=list)  # "path: reason — fix"
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong

    def problem(self, path, reason: str, fix: str) -> None:
        self.problems.append(f"{path}: {reason} — {fix}")


# ---- safetensors headers -----------------------------------------------------------------------

def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (dtype, shape)} from a safetensors header (8-byte length + JSON), without reading tensors.

    Raises ValueError when the header is unreadable or the data it describes runs past the file's end.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError("file shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100_000_000):
            raise ValueError("header length exceeds the file")
        header = json.loads(fh.read(length))
    out, end = {}, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        out[key] = (info["dtype"], tuple(info["shape"]))
        end = max(end, info["data_offsets"][1])
    if 8 + length + end > size:
        raise ValueError(f"truncated: the header describes {8 + length + end:,} bytes, the file has {size:,}")
    return out


def stored_tensors(folder: Path, single: str, index: str, report: Report) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """Every stored key of a component folder (single file or shards), or None after reporting why."""
    fix = f"download {folder.name}/ again"
    files = [folder / single]
    if not files[0].is_file():
        if not (folder / index).is_file():
            report.problem(folder, f"missing {single}", fix)
            return None
        try:
            files = [folder / s for s in sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            report.problem(folder / index, f"unreadable shard index ({err})", fix)
            return None
    tensors = {}
    for file in files:
        if not file.is_file():
            report.problem(file, "missing shard", fix)
            return None
        try:
            tensors.update(read_header(file))
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            report.problem(file, f"not a readable safetensors file ({err})", fix)
            return None
    return tensors


def compare(folder: Path, stored: dict, expected: dict[str, tuple[int, ...]], report: Report,
            ignored: set[str] = frozenset(), unexpected_ok: bool = False) -> None:
    """Report missing / unexpected keys and shape differences between `stored` and `expected`."""
    fix = f"{folder.name}/ does not match its config.json: download the folder again"
    missing = [k for k in expected if k not in stored and k not in ignored]
    unexpected = [k for k in stored if k not in expected]
    wrong = [(k, stored[k][1], expected[k]) for k in expected if k in stored and tuple(stored[k][1]) != expected[k]]
    if missing:
        report.problem(folder, f"{len(missing)} weight(s) missing, e.g. {', '.join(missing[:_SHOW])}", fix)
    if unexpected and unexpected_ok:
        report.notes.append(f"{folder.name}: {len(unexpected)} stored weight(s) the model does not use are ignored")
    elif unexpected:
        report.problem(folder, f"{len(unexpected)} unexpected weight(s), e.g. {', '.join(unexpected[:_SHOW])}", fix)
    for key, got, want in wrong[:_SHOW]:
        report.problem(folder, f"{key} has shape {list(got)}, the config needs {list(want)}", fix)
    if len(wrong) > _SHOW:
        report.problem(folder, f"... and {len(wrong) - _SHOW} more weights of the wrong shape", fix)


def describe(name: str, what: str, stored: dict, report: Report) -> None:
    dtypes = Counter(d for d, _ in stored.values())
    params = sum(_numel(s) for _, s in stored.values())
    size = sum(_numel(s) * _BYTES.get(d, 4) for d, s in stored.values())
    mix = ", ".join(f"{d} x{n}" for d, n in dtypes.most_common())
    report.lines.append(f"  {name + '/':22} {what}: {params:,} parameters, {len(stored)} tensors stored as {mix} "
                        f"({size / 1e9:.2f} GB on disk; {params * 2 / 1e9:.2f} GB in bf16)")
    if any(d not in ("F32", "F16", "BF16") for d in dtypes):
        report.problem(Path(name), f"tensors stored as {mix}; acetune expects float32/float16/bfloat16",
                       "use the official (unquantised) files")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _read_config(folder: Path, report: Report) -> dict | None:
    path = folder / CONFIG_FILE
    if not path.is_file():
        report.problem(path, "missing", f"download {folder.name}/ again")
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    except (OSError, UnicodeDecodeError, ValueError) as err:
        report.problem(path, f"does not parse ({err})", f"download {folder.name}/ again")
        return None


def _meta_shapes(build) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differs(config: dict, official: dict) -> list[str]:
    return [f"{k} {config.get(k)!r} (official {v!r})" for k, v in official.items()
            if not k.startswith("_") and k in config and _norm(config[k]) != _norm(v)]


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, list | tuple) else v


# ---- the components ------------------------------------------------------------------------------

def check_transformer(root: Path, report: Report) -> dict | None:
    from acetune.errors import CheckpointError
    from acetune.models.v1.loading import config_kwargs
    from acetune.models.v1.transformer import ACEStepTransformer2DModel, build_transformer, default_config

    folder = root / V1_TRANSFORMER_DIR
    config = _read_config(folder, report)
    if config is None:
        return None
    try:
        kwargs = config_kwargs(ACEStepTransformer2DModel, config, folder / CONFIG_FILE)
    except CheckpointError as err:
        report.problem(folder / CONFIG_FILE, err.reason, err.fix or f"download {folder.name}/ again")
        return None
    diff = _differs(kwargs, default_config())
    if diff:
        report.notes.append(f"{V1_TRANSFORMER_DIR}: not the official 3.5B config: {'; '.join(diff[:4])}"
                            + (f" (+{len(diff) - 4})" if len(diff) > 4 else ""))
    stored = stored_tensors(folder, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, report)
    if stored is not None:
        compare(folder, stored, _meta_shapes(lambda: build_transformer(kwargs, "meta")), report)
        cfg = {**default_config(), **kwargs}
        describe(V1_TRANSFORMER_DIR, f"ACEStepTransformer2DModel, {cfg['num_layers']} blocks x "
                 f"{cfg['num_attention_heads'] * cfg['attention_head_dim']} wide", stored, report)
    return {**default_config(), **kwargs}


def check_codec_part(root: Path, name: str, report: Report) -> dict | None:
    """music_dcae_f8c8/ (diffusers AutoencoderDC) or music_vocoder/ (our ADaMoSHiFiGANV1)."""
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import official_dcae_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1

    folder = root / name
    config = _read_config(folder, report)
    if config is None:
        return None
    if name == V1_DCAE_DIR:
        cls, official = AutoencoderDC, official_dcae_config()
    else:  # the released vocoder config is the constructor's defaults (golden README)
        cls, official = ADaMoSHiFiGANV1, {k: p.default for k, p in _init_params(ADaMoSHiFiGANV1).items()}
    if config.get("_class_name") != cls.__name__:
        report.problem(folder / CONFIG_FILE, f"describes a {config.get('_class_name')!r}, expected {cls.__name__}",
                       f"put the official {name}/ folder here")
        return None
    diff = _differs(config, official)
    if diff:
        report.notes.append(f"{name}: not the official config: {'; '.join(diff[:3])}"
                            + (f" (+{len(diff) - 3})" if len(diff) > 3 else ""))
    stored = stored_tensors(folder, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, report)
    if stored is None:
        return config
    try:
        expected = _meta_shapes(lambda: cls.from_config(config))
    except (TypeError, ValueError, KeyError) as err:
        report.problem(folder / CONFIG_FILE, f"cannot build {cls.__name__} from it ({err})",
                       f"download {name}/ again")
        return config
    compare(folder, stored, expected, report)
    describe(name, cls.__name__, stored, report)
    return config


def _init_params(cls) -> dict:
    import inspect

    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"
            and p.default is not inspect.Parameter.empty}


def check_text_encoder(root: Path, report: Report) -> dict | None:
    from transformers import UMT5Config, UMT5EncoderModel

    from acetune.models.v1.text_encoder import UMT5_FILES

    folder = root / V1_TEXT_ENCODER_DIR
    for name in UMT5_FILES:
        if not (folder / name).is_file():
            report.problem(folder / name, "missing", f"download {V1_TEXT_ENCODER_DIR}/ again")
    config = _read_config(folder, report)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            _read_config_file(folder / name, report)
    if (folder / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            report.problem(folder / "tokenizer.json", f"does not parse ({str(err)[:120]})",
                           f"download {V1_TEXT_ENCODER_DIR}/ again")
    if config is None or not (folder / "model.safetensors").is_file():
        return config
    diff = [f"{k} {config.get(k)} (official {v})" for k, v in OFFICIAL_UMT5.items() if config.get(k) != v]
    if diff:
        report.notes.append(f"{V1_TEXT_ENCODER_DIR}: not umt5-base: {'; '.join(diff)}")
    stored = stored_tensors(folder, "model.safetensors", "model.safetensors.index.json", report)
    if stored is None:
        return config
    try:
        cfg = UMT5Config(**{k: v for k, v in config.items() if not k.startswith("_")})
        expected = _meta_shapes(lambda: UMT5EncoderModel(cfg))
    except (TypeError, ValueError, KeyError) as err:
        report.problem(folder / CONFIG_FILE, f"not a UMT5 config ({err})", f"download {V1_TEXT_ENCODER_DIR}/ again")
        return config
    tied = {k for k in expected if k.endswith("embed_tokens.weight")}  # saved once, as shared.weight
    compare(folder, stored, expected, report, ignored=tied, unexpected_ok=True)
    describe(V1_TEXT_ENCODER_DIR, f"UMT5 encoder, {cfg.num_layers} layers x {cfg.d_model}",
             {k: v for k, v in stored.items() if k in expected}, report)
    return config


def _read_config_file(path: Path, report: Report) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        report.problem(path, f"does not parse ({err})", f"download {path.parent.name}/ again")


# ---- the machine -----------------------------------------------------------------------------------

def check_machine(args: Args, report: Report) -> None:
    for where in [args.checkpoint_dir] + ([args.output_dir] if args.output_dir else []):
        probe = where if where.exists() else where.parent if where.parent.exists() else Path(".")
        free = shutil.disk_usage(probe).free / 1e9
        report.lines.append(f"  free disk at {where}: {free:.1f} GB")
        if free < MIN_FREE_GB:
            report.problem(where, f"only {free:.1f} GB free (runs, validation audio and datasets need ~{MIN_FREE_GB:.0f} GB)",
                           "free some space or pass another --output_dir")
    if not torch.cuda.is_available():
        report.notes.append("no CUDA GPU visible to torch: training the 3.5B model on a CPU is not practical "
                            "(install the CUDA build of torch)")
        return
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        report.lines.append(f"  GPU {i}: {props.name}, {total / 2**30:.1f} GB ({free / 2**30:.1f} GB free), "
                            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
        if total / 2**30 < 11:
            report.problem(f"cuda:{i}", f"{total / 2**30:.1f} GB of GPU memory; training needs about 12 GB",
                           "use a larger GPU")
        elif total / 2**30 < 16:
            report.notes.append(f"cuda:{i}: {total / 2**30:.0f} GB: train with --int8 (see docs/troubleshooting.md)")


def check_lyric_vocab(root: Path, report: Report) -> None:
    from acetune.errors import AcetuneError
    from acetune.models.v1.lyrics.vocab import LYRIC_VOCAB_SHA256, find_lyric_vocab, sha256_of

    try:
        path = find_lyric_vocab(None, root, download=False)
    except AcetuneError:
        report.notes.append("lyric vocab not found next to the checkpoint or in the cache: preprocess/generate "
                            "download it once (offline: pass --lyric_vocab)")
        return
    official = sha256_of(path) == LYRIC_VOCAB_SHA256
    report.lines.append(f"  lyric vocab: {path}{'' if official else ' (not the official file)'}")


def run(args: Args) -> int:
    hub.resolve_args(args, checkpoint_dir="all")
    report = Report()
    root = args.checkpoint_dir
    missing = [d for d in (V1_TRANSFORMER_DIR, V1_DCAE_DIR, V1_VOCODER_DIR, V1_TEXT_ENCODER_DIR) if not (root / d).is_dir()]
    for d in missing:
        found = ", ".join(sorted(p.name + "/" for p in root.iterdir() if p.is_dir())) or "no sub-folders"
        report.problem(root / d, f"folder missing (found: {found})",
                       "point --checkpoint_dir at the folder holding all four component folders")
    transformer = check_transformer(root, report) if V1_TRANSFORMER_DIR not in missing else None
    dcae = check_codec_part(root, V1_DCAE_DIR, report) if V1_DCAE_DIR not in missing else None
    if V1_VOCODER_DIR not in missing:
        check_codec_part(root, V1_VOCODER_DIR, report)
    umt5 = check_text_encoder(root, report) if V1_TEXT_ENCODER_DIR not in missing else None
    if transformer and umt5 and umt5.get("d_model") != transformer["text_embedding_dim"]:
        report.problem(root / V1_TEXT_ENCODER_DIR, f"d_model {umt5.get('d_model')} but the transformer expects text "
                       f"embeddings of {transformer['text_embedding_dim']}", "use the umt5-base/ of the same release")
    if transformer and dcae and dcae.get("latent_channels") != transformer["in_channels"]:
        report.problem(root / V1_DCAE_DIR, f"latent_channels {dcae.get('latent_channels')} but the transformer takes "
                       f"{transformer['in_channels']}", "use the music_dcae_f8c8/ of the same release")
    check_lyric_vocab(root, report)
    check_machine(args, report)

    print(f"acetune doctor: {root}")
    print("would load:")
    for line in report.lines:
        print(line)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    print(f"{len(report.problems)} problem(s)" + ("" if report.problems else ": ready to preprocess, train and generate"))
    return 1 if report.problems else 0
