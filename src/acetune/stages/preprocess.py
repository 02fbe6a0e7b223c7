"""Encode the filename-only dataset once into everything training needs (no encoder at train time).

Reads the dataset `acetune build-dataset` wrote and writes a preprocessed dataset (schema:
`acetune.dataset.schema`) of DCAE latents, K prompt-variant text embeddings, lyric ids, speaker embedding
and optional MERT / mHuBERT SSL targets, in 16-bit by default. Output is written part by part:
a rerun skips finished songs (same key, file size and mtime), Ctrl-C or a crash loses at most the
part in progress. Under `accelerate launch` / `torchrun` the processes split the songs and write
into one output; `--num_shards/--shard_index` split them over scheduler jobs (`--merge` joins
their outputs). Bad songs are reported and skipped; the exit code is non-zero only with --strict.
See docs/preprocess.md.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from acetune import cli, hub, stopping
from acetune.cli import arg
from acetune.dataset import schema
from acetune.dataset.song import SongRecord, resolve_filename
from acetune.errors import InputError, UsageError
from acetune.preprocessing import codec_parts, distributed, packed, pipeline, ssl, store
from acetune.progress import progress
from acetune.report import Report

EXAMPLES = """examples:
  acetune preprocess --input_name ./songs_filenames --output_name ./songs_prep --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B
  acetune preprocess --input_name ./songs_filenames --output_name ./songs_prep --checkpoint_dir ./ACE-Step-v1-3.5B
  python preprocess_dataset_new.py --input_name ./songs_filenames --output_name ./songs_prep --checkpoint_dir ./ckpt
  acetune preprocess ... --mert_dir mert --trust_remote_code --mhubert_dir utter-project/mHuBERT-147
  accelerate launch --num_processes 4 -m acetune preprocess --input_name ./songs_filenames --output_name ./songs_prep --checkpoint_dir v1
  acetune preprocess ... --num_shards 4 --shard_index 0        # one of four scheduler jobs (e.g. a SLURM array)
  acetune preprocess --merge ./prep_0 ./prep_1 --output_name ./songs_prep
"""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Args:
    input_name: Path | None = arg(None, help="the filename-only dataset folder (from `acetune build-dataset`)",
                                  aliases=("--input", "--dataset"))
    output_name: Path | None = arg(None, help="output folder of the preprocessed dataset (resumed if it exists)",
                                   aliases=("--output",))
    checkpoint_dir: Path | None = arg(None, help="ACE-Step checkpoint folder (music_dcae_f8c8/, music_vocoder/, "
                                                 "umt5-base/, ace_step_transformer/), or a Hub repo id / short name "
                                                 "(e.g. ACE-Step/ACE-Step-v1-3.5B, v1; only the encoders are fetched)")
    revision: str = arg("", help="Hub branch, tag or commit of a --checkpoint_dir repo id (default: main)")
    offline: bool = arg(False, help="use only the HF cache, never the network (also: HF_HUB_OFFLINE=1)")
    family: str = arg("ace-step-v1", help="model family of the checkpoint (ace-step-v1, acestep15)",
                      aliases=("--model_family",))
    lyric_vocab: Path | None = arg(None, help="lyric BPE vocab.json (default: next to the checkpoint, then the cache)")
    device: str = arg("auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    dtype: str = arg("auto", help="compute dtype of the encoders (auto: bfloat16 on a GPU that has it, else float32)",
                     choices=("auto", *DTYPES))
    storage_dtype: str = arg("float16", help="dtype of the stored latents and text embeddings on disk",
                             choices=tuple(schema.STORAGE_DTYPES))
    prompt_variants: int = arg(4, help="text embeddings stored per song: every recaption plus shuffled tag orders")
    seed: int = arg(0, help="seed of the tag shuffles (per song key: reruns and shards give the same prompts)")
    max_duration: float = arg(360.0, help="crop songs to their first N seconds (0: no limit); the window with --split")
    split: bool = arg(False, help="instead of cropping, cut long songs into overlapping --max_duration windows")
    split_overlap: float = arg(10.0, help="seconds shared by consecutive --split windows")
    loudness_lufs: float | None = arg(None, help="normalise each song to this integrated loudness first (e.g. -14)")
    mert_dir: Path | None = arg(None, help="MERT-v1-330M folder or Hub id (`mert`: pinned commit): store its SSL "
                                           "targets (needs --trust_remote_code)")
    mhubert_dir: Path | None = arg(None, help="mHuBERT-147 folder or Hub id (`mhubert`): store its SSL targets")
    trust_remote_code: bool = arg(False, help="allow an SSL model folder's own Python code to run (MERT needs it)")
    ssl_batch_size: int = arg(8, help="SSL chunks per forward pass (changes results only by float rounding)")
    num_shards: int = arg(1, help="split the songs into this many disjoint shards, one per scheduler job (under "
                                  "accelerate launch / torchrun the processes also split each shard)")
    shard_index: int = arg(0, help="which shard this run encodes (0-based)")
    rank_timeout: float = arg(30.0, help="under accelerate launch / torchrun: minutes a process waits for the others "
                                         "while none of them finishes a part, before it stops with an error")
    part_size: int = arg(16, help="songs per written part (the most work a crash can lose)")
    num_workers: int = arg(2, help="audio decoding threads (decode the next songs while the encoders run; 0: inline)")
    batch_songs: bool = arg(False, help="batch text encoder and SSL models across songs: faster, but rows equal "
                                        "song-by-song ones only to float rounding (shards/resumes not bit-identical)")
    compile: bool = arg(False, help="torch.compile the heavy encoders (slow first songs; needs a C++ compiler on CPU)")
    pack_weights: bool = arg(False, help="bf16 on a CPU: pack the encoders' linear weights once for oneDNN instead of "
                                         "on every call (bit-identical rows; measured ~1%% faster on a whole run)")
    merge: list[Path] = arg(help="merge mode: copy the songs of these preprocessed outputs into --output_name",
                            default_factory=list)
    overwrite: bool = arg(False, help="delete an existing output first instead of resuming it")
    dry_run: bool = arg(False, help="check everything and print what would be encoded, then stop")
    strict: bool = arg(False, help="exit with code 1 if any problem was reported")
    report: Path | None = arg(None, help="also write the problem report as JSON to this file")

    def __post_init__(self):
        for name in ("input_name", "output_name", "checkpoint_dir", "lyric_vocab", "mert_dir", "mhubert_dir", "report"):
            value = getattr(self, name)
            setattr(self, name, None if value in (None, "") else Path(value))
        self.merge = [Path(p) for p in self.merge or []]
        if self.output_name is None:
            raise UsageError("--output_name is required", fix="pass the folder to write the preprocessed dataset to")
        if self.merge:
            return
        missing = [f"--{n}" for n in ("input_name", "checkpoint_dir") if getattr(self, n) is None]
        if missing:
            raise UsageError(f"{' and '.join(missing)} required", fix="see `acetune preprocess --help`")
        problems = []
        if not 0 <= self.shard_index < self.num_shards:
            problems.append(f"--shard_index must be in 0..{self.num_shards - 1}")
        if self.rank_timeout <= 0:
            problems.append("--rank_timeout must be > 0")
        if self.prompt_variants < 1 or self.part_size < 1 or self.ssl_batch_size < 1 or self.num_workers < 0:
            problems.append("--prompt_variants, --part_size and --ssl_batch_size must be >= 1, --num_workers >= 0")
        if self.max_duration < 0:
            problems.append("--max_duration must be >= 0")
        if self.split and not self.max_duration:
            problems.append("--split needs a --max_duration window")
        if self.split and not 0 <= self.split_overlap < self.max_duration:
            problems.append("--split_overlap must be at least 0 and shorter than --max_duration")
        if problems:
            raise UsageError("; ".join(problems), fix="see `acetune preprocess --help`")


def resolve_device(args: Args, launched: torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """`launched`: the device a launcher gave this process (used with --device auto)."""
    device = launched or torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                                      ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: this torch has no CUDA device", fix="use --device cpu")
    if args.dtype != "auto":
        return device, DTYPES[args.dtype]
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if bf16 else torch.float32


def read_songs(path: Path, report: Report) -> list[SongRecord]:
    """Unique songs of the filename-only dataset, in order (repeated rows are encoded once)."""
    from datasets import Dataset, load_from_disk

    fix = "pass the folder `acetune build-dataset` wrote"
    if not path.is_dir():
        raise InputError("input dataset folder not found", path=path, fix=fix)
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"not a dataset folder ({str(err).splitlines()[0][:200]})", path=path, fix=fix) from None
    if not isinstance(ds, Dataset) or "filename" not in ds.column_names:
        raise InputError("dataset has no filename column", path=path, fix=fix)
    songs: dict[str, SongRecord] = {}
    repeats = 0
    cwd_relative = 0
    for row in ds:
        rec = SongRecord.from_dict(row)
        if rec.filename:
            rec.filename, from_cwd = resolve_filename(rec.filename, path)
            cwd_relative += from_cwd
        if not rec.keys or not rec.filename:
            report.problem(path, f"row without keys/filename ({rec.keys or rec.filename!r})", "rebuild the dataset")
        elif rec.keys not in songs:
            songs[rec.keys] = rec
        elif songs[rec.keys].filename == rec.filename:
            repeats += 1
        else:
            report.problem(rec.filename, f"key {rec.keys!r} is also used by {songs[rec.keys].filename}",
                           "give every song a unique key (rebuild with `acetune build-dataset`)")
    if repeats:
        report.set("repeated rows encoded once", repeats)
    if cwd_relative:
        report.warning(path, f"{cwd_relative} filename(s) were found only relative to the working folder, not to "
                       "the dataset folder", "rebuild the dataset with `acetune build-dataset` (it writes absolute paths)")
    return list(songs.values())


def build_meta(args: Args, family, ssl_names: tuple[str, ...], dtype: torch.dtype, device: torch.device,
               sources: dict | None = None):
    settings = {
        "encoder_config_hash": family.encoder_config_hash(args.checkpoint_dir),
        "max_duration": args.max_duration, "split": args.split,
        "split_overlap": args.split_overlap if args.split else None,
        "seed": args.seed, "loudness_lufs": args.loudness_lufs,
        "ssl_models": {n: _model_name(d, (sources or {}).get(f)) for n, f, d in (
            ("mert", "mert_dir", args.mert_dir), ("m-hubert", "mhubert_dir", args.mhubert_dir)) if d},
        "model_sources": sources or {},  # Hub repo + commit (or local path) of every model used
        "num_shards": args.num_shards, "shard_index": args.shard_index, "device": str(device),
        "compute_dtype": str(dtype).removeprefix("torch."), "part_size": args.part_size,
    }
    return schema.DatasetMeta(family=family.name, checkpoint_hash=family.config_hash(args.checkpoint_dir),
                              storage_dtype=args.storage_dtype, ssl_names=list(ssl_names),
                              prompt_variants=args.prompt_variants, settings=settings,
                              checkpoint=(family.checkpoint_identity(args.checkpoint_dir)
                                          if hasattr(family, "checkpoint_identity") else {}))


def _model_name(folder, source: dict | None) -> str:
    """The SSL model's name: its folder name, or the repo name for a Hub download (not the commit folder)."""
    return source["repo_id"].split("/")[-1] if source and "repo_id" in source else Path(folder).name


def prepare_output(out: Path, meta: schema.DatasetMeta, overwrite: bool) -> None:
    """Refuse to mix settings in one output; clear it with --overwrite."""
    if not out.exists():
        return
    is_ours = (out / schema.META_FILE).is_file()
    if not is_ours and any(out.iterdir()):
        raise UsageError("output folder exists and is not a preprocessed acetune dataset", path=out,
                         fix="pass a new --output_name")
    if is_ours and overwrite:
        shutil.rmtree(out / schema.PARTS_DIR, ignore_errors=True)
        (out / schema.META_FILE).unlink()
    elif is_ours:
        store.check_compatible(schema.DatasetMeta.load(out), meta, out,
                               fix="use the same flags to resume, a new --output_name, or --overwrite")


def load_encoders(args: Args, family, dtype: torch.dtype) -> pipeline.Encoders:
    """Every encoder, on the CPU (phases move one at a time to the device)."""
    if hasattr(family, "load_preprocess_encoders"):  # a family with its own encoders (ACE-Step 1.5)
        return family.load_preprocess_encoders(args.checkpoint_dir, dtype=dtype)
    ssl_models = {}
    for name, folder, flag in (("mert", args.mert_dir, "--mert_dir"), ("m-hubert", args.mhubert_dir, "--mhubert_dir")):
        if folder is not None:
            ssl_models[name] = ssl.load_ssl_model(folder, flag=flag, trust_remote_code=args.trust_remote_code,
                                                  dtype=dtype)
    return pipeline.Encoders(
        codec=codec_parts.encoder_only(family.load_codec(args.checkpoint_dir, dtype=dtype)),
        text=family.load_text_encoder(args.checkpoint_dir, dtype=dtype),
        lyrics=family.load_lyric_tokenizer(args.checkpoint_dir, args.lyric_vocab),
        ssl_models=ssl_models, sample_rate=family.sample_rate,
        speaker_dim=family.speaker_dim(args.checkpoint_dir))


def run_merge(args: Args) -> int:
    for src in args.merge:
        schema.DatasetMeta.load(src)  # one-line error if a source is not an output
    added, skipped = store.merge_outputs(args.merge, args.output_name)
    ds, _ = schema.load_dataset(args.output_name)
    print(f"merged {added} part(s) into {args.output_name} ({len(ds)} rows; {skipped} duplicate song(s) skipped)")
    return 0


def run(args: Args) -> int:
    if args.merge:
        return run_merge(args)
    import datasets

    datasets.disable_progress_bars()  # ours is enough
    # one process, or one rank of an `accelerate launch` / `torchrun` (docs/preprocess.md)
    launch = distributed.Launch.from_env(args.num_shards, args.shard_index, args.device, args.rank_timeout)
    with launch.guard():  # an error on this rank reaches the others: none waits for it
        return encode(args, launch)


def encode(args: Args, launch: distributed.Launch) -> int:
    from acetune.models.family import check_family, get_family

    report = Report("preprocess")
    family = get_family(args.family)
    sources = hub.resolve_args(args, checkpoint_dir="preprocess", mert_dir="all", mhubert_dir="all")
    check_family(args.checkpoint_dir, family)
    # names the first missing file, before any work (only the parts preprocess reads)
    family.check_checkpoint(args.checkpoint_dir, components=hub.stage_components(family.name, "preprocess"))
    device, dtype = resolve_device(args, launch.device)
    split = launch.split
    all_songs = read_songs(args.input_name, report)
    songs = split.rank_songs(all_songs)
    encoders = load_encoders(args, family, dtype)
    if args.compile:
        pipeline.batching.compile_encoders(encoders)
    elif args.pack_weights and packed.can_pack(device, dtype):
        packed.pack_encoders(encoders)
    meta = build_meta(args, family, encoders.ssl_names, dtype, device, sources)
    meta.settings.update(split.settings())
    out = args.output_name
    done, changed = None, 0
    if launch.is_main:  # the one process that changes what the output already holds
        prepare_output(out, meta, args.overwrite)
        launch.prepare(out, args.dry_run)
        done = store.index_rows(out) if out.exists() else {}
        _, stale = plan(split.shard_songs(all_songs), done, out)
        changed = len(set().union(*stale.values()))
        for keys in stale.values():
            for key in keys:
                done.pop(key, None)
        if not args.dry_run:
            for part, keys in stale.items():
                store.drop_songs(part, keys)
            meta.save(out.mkdir(parents=True, exist_ok=True) or out)
    launch.start(out, args.dry_run)  # every rank ready, or all stop with the first error
    if done is None:
        done = store.index_rows(out) if out.exists() else {}
    todo, _ = plan(songs, done, out)
    report.set("songs in this shard", len(songs))
    report.set("already done (skipped)", len(songs) - len(todo))
    where = f"shard {args.shard_index + 1}/{args.num_shards}"
    if launch.distributed:
        where += f", {launch.rank_name()}"
    print(f"preprocess: {len(songs)} songs in {where}, {len(todo)} to encode ({changed} changed since last run); "
          f"device {device}, {str(dtype)[6:]}, stored as {args.storage_dtype}, {args.prompt_variants} prompt variants, "
          f"SSL: {', '.join(encoders.ssl_names) or 'off'}", file=sys.stderr)
    if args.dry_run:
        for song in todo:
            print(f"would encode {song.keys}\t{song.filename}")
        return report.exit_code(args.strict)
    settings = pipeline.Settings(device=device, storage_dtype=args.storage_dtype, prompt_variants=args.prompt_variants,
                                 seed=args.seed, max_duration=args.max_duration or None, split=args.split,
                                 split_overlap=args.split_overlap, loudness_lufs=args.loudness_lufs,
                                 ssl_batch_size=args.ssl_batch_size, num_workers=args.num_workers,
                                 text_batch_size=32 if args.batch_songs else 1, pool_ssl=args.batch_songs)
    start = time.perf_counter()
    rows = 0
    bar = progress(total=len(todo), desc="preprocess", unit="song", smoothing=0)
    try:
        with stopping.graceful_stop():  # Ctrl-C / SIGTERM: finish and write the current part, then stop
            for i in range(0, len(todo), args.part_size):
                part_rows = getattr(family, "encode_part", pipeline.encode_part)(
                    todo[i:i + args.part_size], encoders, settings, report, on_song=lambda: bar.update(1))
                if part_rows:
                    store.write_part(out, split.tag, part_rows, encoders.ssl_names)
                    rows += len(part_rows)
                    report.count("songs encoded", sum(r[schema.WINDOW] == 0 for r in part_rows))
                    report.count("audio encoded (s)", sum(r[schema.DURATION] for r in part_rows))
                    launch.part_written()
                if stopping.stop_requested():
                    break
    except KeyboardInterrupt:  # a second signal: parts are written by rename, so every finished part is whole
        bar.close()
        launch.finish(report, rows, stopped=True)
        report.print_summary()
        print(f"Aborted: the {rows} rows of finished parts are kept; continue with: "
              f"{stopping.command_line(cli.invocation())}", file=sys.stderr)
        return stopping.exit_code()
    bar.close()
    if stopping.stop_requested():
        launch.finish(report, rows, stopped=True)
        report.print_summary()
        print(f"Stopped by {stopping.signal_name()}: {rows} rows written, the part in progress was finished; "
              f"continue with: {stopping.command_line(cli.invocation())}", file=sys.stderr)
        return stopping.exit_code()
    if launch.distributed:
        if todo and not rows:
            report.print_summary()
            raise nothing_encoded(args, len(todo))
        results = launch.finish(report, rows)  # waits for every rank; one line if one failed
        if not launch.is_main:
            print(f"preprocess: {launch.rank_name()} wrote {rows} rows; rank 0 prints the summary of all ranks",
                  file=sys.stderr)
            return report.exit_code(args.strict)
        rows = launch.combine(report, results)
        distributed.check_order(out, split.shard_songs(all_songs), report)
        launch.cleanup()
    code = finish(args, report, rows, time.perf_counter() - start)  # a launch: until its last rank finished
    if todo and not rows:
        raise nothing_encoded(args, len(todo))
    return code


def nothing_encoded(args: Args, count: int) -> InputError:
    return InputError(f"none of the {count} songs could be encoded, nothing was written", path=args.input_name,
                      fix="fix the problems listed above and run again")


def plan(songs: list[SongRecord], done: dict[str, store.SongEntry], out: Path):
    """(songs to encode, {part folder: song keys to drop}) from what the output already holds.

    A finished song is skipped when its file has the same size and mtime; a changed file is
    encoded again and its old rows dropped. A finished song whose file is gone keeps its rows.
    """
    todo: list[SongRecord] = []
    stale: dict[Path, set[str]] = {}
    for song in songs:
        entry = done.get(song.keys)
        if entry is None:
            todo.append(song)
            continue
        try:
            st = Path(song.filename).stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) != (entry.source_size, entry.source_mtime_ns):
            todo.append(song)
            for name in entry.parts:
                stale.setdefault(store.parts_root(out) / name, set()).add(song.keys)
    return todo, stale


def finish(args: Args, report: Report, rows: int, seconds: float) -> int:
    """Print the summary: rows, songs/s, bytes on disk and MB per audio-second of the whole output."""
    out = args.output_name
    encoded = report.counters.get("songs encoded", 0)
    report.set("rows written", rows)
    if seconds > 0 and encoded:
        report.set("songs per second", round(encoded / seconds, 2))
    total_rows, audio_s, size = 0, 0.0, store.output_bytes(out)
    if schema.part_dirs(out):
        ds, _ = schema.load_dataset(out)
        total_rows, audio_s = len(ds), float(sum(ds.select_columns([schema.DURATION])[schema.DURATION]))
    mb_per_s = size / 1e6 / audio_s if audio_s else 0.0
    report.set("output rows", total_rows)
    report.set("output size (MB)", round(size / 1e6, 1))
    report.set("kB per audio-second", round(mb_per_s * 1000, 1))  # the summary prints one decimal
    report.print_summary()
    if args.report is not None:
        report.save(args.report)
    print(f"wrote {rows} rows to {out} ({total_rows} in total, {size / 1e6:.1f} MB, "
          f"{mb_per_s:.4f} MB per audio-second)")
    sys.stdout.flush()
    return report.exit_code(args.strict)
