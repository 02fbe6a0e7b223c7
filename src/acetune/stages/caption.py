"""Write tag prompts, lyrics, BPM and key next to each song, for `acetune build-dataset` to read.

Tags (and with --lyrics, lyrics with [verse]/[chorus] tags, or [instrumental]) come from
Qwen2.5-Omni, loaded from a local folder (--model_path; bf16, or GPTQ with `acetune[gptq]`) or
reached through any OpenAI-compatible chat server with audio input such as llama.cpp's
llama-server (--server_url). Songs longer than the model's window are captioned in chunks and the
tags merged. BPM (beat tracking) and key (chroma + key profiles) are measured here, no web tool
needed, and merged into the song's .json; integrated loudness (LUFS) is printed for each song.
Songs whose files already exist are skipped unless --overwrite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from acetune import cli, hub, stopping
from acetune.cli import arg
from acetune.dataset.sidecars import INSTRUMENTAL, SIDECAR_NAMES, sidecar_name
from acetune.errors import AcetuneError, CheckpointError, InputError, UsageError
from acetune.progress import progress
from acetune.report import Report

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  acetune caption --data_dir C:\\data\\audio --model_path C:\\models\\Qwen2.5-Omni-7B-GPTQ-Int4
  acetune caption --data_dir songs --server_url http://127.0.0.1:8080 --lyrics
  acetune caption --data_dir songs --model_path qwen-omni-gptq --lyrics   # fetched from the Hub once
  acetune caption --data_dir songs --no-tags            # only BPM, key and loudness
  acetune caption --data_dir songs --model_path qwen --format acestep15 --overwrite
"""
FORMATS = tuple(SIDECAR_NAMES)
META_CONVENTION = "acestep15"  # every convention gets BPM/key in ACE-Step 1.5's `stem.json`


@dataclass
class Args:
    data_dir: Path = arg(help="folder of audio files; sidecars are written next to them")
    model_path: Path | None = arg(None, help="Qwen2.5-Omni folder or Hub id / short name (qwen-omni, qwen-omni-gptq; "
                                             "bf16, or GPTQ with `pip install acetune[gptq]`)")
    server_url: str | None = arg(None, help="OpenAI-compatible chat server with audio input, e.g. http://127.0.0.1:8080")
    server_model: str = arg("qwen2.5-omni", help="`model` name sent to --server_url")
    lyrics: bool = arg(False, help="also transcribe lyrics with structure tags ([instrumental] when no voice)")
    overwrite: bool = arg(False, help="rewrite sidecars that already exist")
    format: str = arg("fork", choices=FORMATS, help="sidecar naming: fork (song_prompt.txt), simpletuner "
                                                   "(song.txt), acestep15 (song.caption.txt)")
    tags: bool = arg(True, help="generate tags with a model (--no-tags: only BPM, key and loudness)")
    analyze: bool = arg(True, help="measure BPM and key into the song's .json and report loudness")
    chunk_seconds: float | None = arg(None, help="audio per model request (default: the model's window, 300 s)")
    max_new_tokens: int = arg(1000, help="longest answer the model may give per chunk")
    device: str = arg("auto", help="auto, cuda, cuda:1 or cpu (for --model_path)")
    dtype: str = arg("bfloat16", choices=("bfloat16", "float16", "float32"), help="weights dtype for --model_path")
    files: list[str] = arg(default_factory=list, help="only these audio files of --data_dir (file names; "
                           "default: every song)")
    dry_run: bool = arg(False, help="list what would be written, load no model")
    strict: bool = arg(False, help="exit with code 1 if any song had a problem")

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        problems = []
        if self.model_path is not None and self.server_url:
            problems.append("pass either --model_path or --server_url, not both")
        if self.tags and self.model_path is None and not self.server_url and not self.dry_run:
            problems.append("tags need --model_path (local Qwen2.5-Omni folder) or --server_url; "
                            "pass --no-tags to only measure BPM, key and loudness")
        if not self.tags and not self.analyze and not self.lyrics:
            problems.append("--no-tags with --no-analyze leaves nothing to do")
        if self.chunk_seconds is not None and self.chunk_seconds < 1:
            problems.append("--chunk_seconds must be at least 1")
        if problems:
            raise UsageError("; ".join(problems), fix="run `acetune caption --help`")


@dataclass
class Plan:
    """What one song still needs (paths are None when not needed)."""

    audio: Path
    prompt: Path | None
    lyrics: Path | None
    meta: Path | None

    @property
    def empty(self) -> bool:
        return self.prompt is None and self.lyrics is None and self.meta is None


def find_songs(folder: Path) -> list[Path]:
    """Audio files directly in `folder`, sorted by name (as the fork does)."""
    from acetune.audio.io import AUDIO_EXTENSIONS

    if not folder.is_dir():
        raise InputError("audio folder not found", path=folder, fix="pass the folder holding your songs to --data_dir")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def read_meta(path: Path) -> dict:
    """The song's .json as a dict ({} when absent)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot parse existing metadata ({e.__class__.__name__})", path=path,
                         fix="fix or delete the .json; it was left untouched") from None
    if not isinstance(data, dict):
        raise InputError("existing metadata is not a JSON object", path=path, fix="fix or delete the .json")
    return data


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 with \\n line ends and no trailing newline, via a temp name and rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def merge_meta(path: Path, updates: dict) -> None:
    """Merge `updates` into the song's .json, keeping every other field."""
    data = read_meta(path)
    data.update(updates)
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2))


def plan_song(audio: Path, args: Args) -> Plan:
    stem, folder = audio.stem, audio.parent
    prompt = folder / sidecar_name(args.format, "prompt", stem)
    lyrics = folder / sidecar_name(args.format, "lyrics", stem)
    meta = folder / sidecar_name(META_CONVENTION, "meta", stem)
    need_meta = args.analyze and (args.overwrite or not {"bpm", "keyscale"} <= set(read_meta(meta)))
    return Plan(audio=audio,
                prompt=prompt if args.tags and (args.overwrite or not prompt.exists()) else None,
                lyrics=lyrics if args.lyrics and (args.overwrite or not lyrics.exists()) else None,
                meta=meta if need_meta else None)


def make_backend(args: Args):
    from acetune.captioning.backends import OpenAIChatBackend, QwenOmniBackend

    if args.server_url:
        return OpenAIChatBackend(args.server_url, model=args.server_model, max_tokens=args.max_new_tokens,
                                 window_seconds=args.chunk_seconds)
    hub.resolve_args(args, model_path="all")
    return QwenOmniBackend(args.model_path, device=args.device, dtype=args.dtype,
                           max_new_tokens=args.max_new_tokens, window_seconds=args.chunk_seconds)


def caption_song(plan: Plan, backend, args: Args, report: Report) -> bool:
    """Load, analyse, caption and write one song. Returns False if the backend must be dropped."""
    import torch

    from acetune.audio.analysis import analyze
    from acetune.audio.io import audio_read
    from acetune.audio.resample import resample
    from acetune.captioning.backends import SAMPLE_RATE, caption_audio

    wav48 = audio_read(plan.audio)  # (2, T) float32 at 48 kHz; InputError if undecodable
    wav16 = resample(wav48.mean(dim=0, keepdim=True), 48000, SAMPLE_RATE)[0]  # (T,) mono 16 kHz
    if args.analyze:
        a = analyze(wav16, SAMPLE_RATE, loudness_wav=wav48, loudness_rate=48000)
        lufs = f"{a.lufs:.1f} LUFS" if math.isfinite(a.lufs) else "silent"
        tempo = f"{round(a.bpm)} BPM" if a.bpm else "no steady beat"
        print(f"{plan.audio.name}: {tempo}, {a.keyscale or 'no clear key'}, {lufs}", flush=True)
        if math.isfinite(a.lufs):
            report.count("loudness sum (LUFS)", a.lufs)
            report.count("songs measured")
        if plan.meta is not None:
            if a.meta():
                merge_meta(plan.meta, a.meta())
                report.count("metadata written")
            else:
                report.warning(plan.audio, "no steady beat or pitch found; BPM/key not written",
                               "add bpm/keyscale to the .json by hand if the song has them")
    if backend is None or (plan.prompt is None and plan.lyrics is None):
        return True
    try:
        caption, answers = caption_audio(backend, wav16.numpy().astype("float32", copy=False), args.lyrics)
    except (UsageError, CheckpointError) as e:  # server gone, credentials: no point asking again
        report.add_error(e)
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # long songs leave large activation blocks behind
    if plan.prompt is not None:
        if caption.tags:
            from acetune.captioning.tags import format_prompt

            write_text(plan.prompt, format_prompt(caption.tags))
            report.count("prompts written")
        else:
            report.problem(plan.audio, f"no usable tags in the model's answer ({answers[0][:80]!r})",
                           "rerun with --overwrite, or write the prompt file by hand")
    if plan.lyrics is not None:
        if caption.has_vocal is False or (caption.has_vocal is None and caption.parsed_json and not caption.lyrics):
            write_text(plan.lyrics, INSTRUMENTAL)
            report.count("lyrics written")
        elif caption.lyrics:
            write_text(plan.lyrics, caption.lyrics)
            report.count("lyrics written")
        else:
            report.problem(plan.audio, "the model gave no lyrics", "rerun with --overwrite, or write the lyrics by hand")
    return True


def run(args: Args) -> int:
    report = Report("caption")
    songs = find_songs(args.data_dir)
    if args.files:
        missing = sorted(set(args.files) - {p.name for p in songs})
        if missing:
            raise UsageError(f"--files names songs not in --data_dir: {', '.join(missing[:5])}", path=args.data_dir,
                             fix="pass audio file names (e.g. song.wav) of that folder")
        songs = [p for p in songs if p.name in set(args.files)]
    plans = []
    for song in songs:
        try:
            plan = plan_song(song, args)
        except InputError as e:  # unreadable existing .json: leave that song alone
            report.add_error(e)
            continue
        if plan.empty:
            report.count("skipped (sidecars exist)")
        else:
            plans.append(plan)
    report.set("songs found", len(songs))
    print(f"caption: {len(songs)} songs in {args.data_dir}, {len(plans)} to process "
          f"(format {args.format}, tags {'on' if args.tags else 'off'}, lyrics {'on' if args.lyrics else 'off'})",
          file=sys.stderr)
    if args.dry_run:
        for p in plans:
            names = [x.name for x in (p.prompt, p.lyrics, p.meta) if x is not None]
            print(f"{p.audio.name}: would write {', '.join(names)}")
        return 0
    backend = None
    if args.tags and any(p.prompt is not None or p.lyrics is not None for p in plans):
        try:
            backend = make_backend(args)
        except AcetuneError as e:  # model folder missing, gptqmodel missing: still measure BPM/key
            report.add_error(e)
    done = 0
    with stopping.graceful_stop():  # Ctrl-C / SIGTERM: finish the song in progress (its files), then stop
        for plan in progress(plans, desc="caption", unit="song"):
            if stopping.stop_requested():
                break
            try:
                if not caption_song(plan, backend, args, report):
                    backend = None  # the backend failed for good (server gone, credentials)
                elif backend is not None or not (args.tags and (plan.prompt or plan.lyrics)):
                    done += 1  # only songs that got every file they were planned to get
            except AcetuneError as e:
                report.add_error(e)
    report.set("songs processed", done)
    n = report.counters.pop("songs measured", 0)
    total = report.counters.pop("loudness sum (LUFS)", 0.0)
    if n:
        report.set("mean loudness (LUFS)", total / n)
    report.print_summary()
    if stopping.stop_requested():
        print(f"Stopped by {stopping.signal_name()} after {done} of {len(plans)} songs; songs with their files "
              f"written are skipped next time; continue with: {stopping.command_line(cli.invocation())}",
              file=sys.stderr)
        return stopping.exit_code()
    if plans and not done:
        raise InputError(f"none of the {len(plans)} songs got its files (see the problems above)", path=args.data_dir,
                         fix="fix the problems listed above (server address, model folder, audio files) and run again")
    return report.exit_code(strict=args.strict)
