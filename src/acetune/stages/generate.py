"""Generate a song with ACE-Step v1: prompt + lyrics + duration + seed (+ LoRAs) -> 48 kHz stereo audio.

Uses the reference's default sampler (60 flow-matching Euler steps, APG guidance 15 on the middle
half of the steps, omega 10, ERG tag/lyric/diffusion on). Each `--lora PATH[:STRENGTH]` is fused
into the transformer's weights (strength 1.0 = as trained; the scale comes from the file: `.alpha`
tensors, else its peft adapter config, else 1.0). Long songs are decoded in windows, so memory is
the transformer plus a bounded decode buffer. See docs/generate.md.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from acetune import hub
from acetune.cli import arg
from acetune.errors import InputError, UsageError
from acetune.models.v1.pipeline import MIN_DURATION, SAMPLE_RATE, output_samples
from acetune.models.v1.sampler import SamplerSettings

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  acetune generate --checkpoint_dir ACE-Step/ACE-Step-v1-3.5B --prompt "lofi, chill, mellow keys" --duration 30
  acetune generate --checkpoint_dir ACE-Step-v1-3.5B --prompt "synthwave, female vocals" \\
      --lyrics lyrics.txt --seed 42 --lora out/step-001000 --output song.flac
  # two LoRAs with strengths, fewer steps:
  acetune generate --checkpoint_dir ACE-Step-v1-3.5B --prompt "jazz trio" \\
      --lora style.safetensors:0.8 drums.safetensors:0.5 --steps 27
"""

FORMATS = ("wav", "flac", "mp3")
_LYRIC_FILE_SUFFIXES = (".txt", ".lrc", ".md")


def parse_lora(spec: str) -> tuple[Path, float]:
    """`PATH[:STRENGTH]` -> (path, strength); strength defaults to 1.0. `C:\\x.safetensors` stays a path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:  # a drive letter or a colon inside the path, unless PATH exists: a bad strength
            if Path(head).exists() and not Path(spec).exists():
                raise UsageError(f"--lora {spec}: the strength {tail!r} is not a number",
                                 fix=f"write it as {head}:0.8 (or leave out :STRENGTH for 1.0)") from None
    return Path(spec), 1.0


@dataclass
class Args:
    checkpoint_dir: str = arg(help="the ACE-Step checkpoint folder (v1: ace_step_transformer/, music_dcae_f8c8/, "
                                   "music_vocoder/, umt5-base/), or a Hub repo id / short name[@revision]")
    prompt: str = arg(help="caption / tags describing the music, e.g. \"pop, female vocals, 120 bpm\"")
    lyrics: str = arg("", help="lyrics text, or the path of a text file holding them; empty = instrumental")
    duration: float = arg(60.0, help="length in seconds (the file is at most 0.093 s shorter: one latent frame)",
                          aliases=("--audio_duration",))
    seed: int | None = arg(None, help="noise seed; the same seed and flags give the same song (default: random, "
                                      "printed)")
    lora: list[str] = arg(default_factory=list, metavar="PATH[:STRENGTH]",
                          help="LoRA file or checkpoint folder, optionally with a strength (default 1.0); "
                               "give several after one --lora, or repeat --lora, to stack them")
    steps: int = arg(60, help="sampling steps", aliases=("--infer_steps",))
    guidance_scale: float = arg(15.0, help="guidance scale (1 turns guidance off: one model call per step)")
    cfg_type: str = arg("apg", choices=("apg", "cfg"), help="guidance: APG (reference default) or plain CFG")
    omega_scale: float = arg(10.0, help="Euler step granularity (reference omega)")
    guidance_interval: float = arg(0.5, help="fraction of the steps, centred, that use guidance")
    guidance_interval_decay: float = arg(0.0, help="1.0: guidance falls linearly to --min_guidance_scale "
                                                   "over the interval")
    min_guidance_scale: float = arg(3.0, help="guidance floor when decaying")
    use_erg_tag: bool = arg(True, help="ERG on the prompt (damped UMT5 attention for the unconditional text)")
    use_erg_lyric: bool = arg(True, help="ERG on the lyrics (damped lyric-encoder attention when unconditional)")
    use_erg_diffusion: bool = arg(True, help="ERG in the transformer (damped attention in blocks 15-19 when "
                                             "unconditional)")
    output: str | None = arg(None, help="output file (.wav, .flac or .mp3); default generated-<seed>.<format>")
    format: str | None = arg(None, choices=FORMATS, help="audio format; default: from --output's extension, "
                                                        "else wav")
    device: str = arg("auto", help="auto (cuda if available), cuda, cuda:1, cpu, ...")
    dtype: str = arg("auto", choices=("auto", "bf16", "fp16", "fp32"), help="weights dtype (auto: bf16 on GPU, "
                                                                            "fp32 on CPU)")
    lyric_vocab: str | None = arg(None, help="lyric BPE vocab.json (default: next to the checkpoint, else cache)")
    loras: list[tuple[Path, float]] = field(init=False, default_factory=list)

    def __post_init__(self):
        problems = []
        if not (self.duration == self.duration and MIN_DURATION <= self.duration < float("inf")):
            problems.append(f"--duration must be at least {MIN_DURATION:.3f} seconds (got {self.duration})")
        if self.steps < 1:
            problems.append(f"--steps must be at least 1 (got {self.steps})")
        if not 0.0 <= self.guidance_interval <= 1.0:
            problems.append(f"--guidance_interval must be between 0 and 1 (got {self.guidance_interval})")
        if self.output is not None:
            ext = Path(self.output).suffix.lower().lstrip(".")
            if ext and ext not in FORMATS:
                problems.append(f"--output must end in .wav, .flac or .mp3 (got .{ext})")
            elif ext and self.format and ext != self.format:
                problems.append(f"--output ends in .{ext} but --format is {self.format}; choose one")
        self.loras = [parse_lora(s) for s in self.lora]
        if problems:
            raise UsageError("; ".join(problems))

    def settings(self) -> SamplerSettings:
        return SamplerSettings(
            infer_steps=self.steps, guidance_scale=self.guidance_scale, cfg_type=self.cfg_type,
            omega_scale=self.omega_scale, guidance_interval=self.guidance_interval,
            guidance_interval_decay=self.guidance_interval_decay, min_guidance_scale=self.min_guidance_scale,
            use_erg_lyric=self.use_erg_lyric, use_erg_diffusion=self.use_erg_diffusion,
        )

    def output_path(self, seed: int) -> Path:
        if self.output is None:
            return Path(f"generated-{seed}.{self.format or 'wav'}")
        path = Path(self.output)
        return path if path.suffix else path.with_name(path.name + f".{self.format or 'wav'}")


def read_lyrics(value: str) -> str:
    """`--lyrics`: the text itself, or the content of the file it names."""
    if not value or "\n" in value:
        return value
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # too long or invalid for a path: it is text
        is_file = False
    if is_file:
        try:
            return path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read lyrics file ({e.__class__.__name__})", path=path,
                             fix="save the lyrics as UTF-8 text") from None
    if path.suffix.lower() in _LYRIC_FILE_SUFFIXES and " " not in value:
        raise InputError("lyrics file not found", path=path, fix="check the path, or pass the lyrics text itself")
    return value


def run(args: Args) -> int:
    from acetune.audio.io import audio_write
    from acetune.lora.check import check_render
    from acetune.lora.file import NO_SCALE_WARN, read_lora
    from acetune.models.family import family_names, get_family
    from acetune.models.v1.pipeline import V1Generator

    lyrics = read_lyrics(args.lyrics)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    out = args.output_path(seed)
    hub.resolve_args(args, checkpoint_dir="all")
    family = next((f for f in map(get_family, family_names()) if f.detect(Path(args.checkpoint_dir))), None)
    if hasattr(family, "generate_song"):  # a family with its own pipeline (ACE-Step 1.5)
        return family.generate_song(args, lyrics, seed, out)
    # read every LoRA first: a bad file fails before the model is loaded
    loras = [(read_lora(path, if_no_scale=NO_SCALE_WARN), strength) for path, strength in args.loras]
    start = time.monotonic()
    generator = V1Generator.from_pretrained(args.checkpoint_dir, device=args.device, dtype=args.dtype,
                                            free_encoders=True, lyric_vocab=args.lyric_vocab)
    logger.info("generating %.1f s on %s (%s), seed %d, %d steps", args.duration, generator.device,
                str(generator.dtype).removeprefix("torch."), seed, args.steps)
    if loras:
        generator.apply_loras(loras, keep_original=False)  # one song per process: nothing to restore
        for lora, strength in loras:
            logger.info("LoRA %s at strength %g (%d modules, scale from %s)", lora.path, strength,
                        len(lora.modules), lora.scale_source)
    wav = generator.render(args.prompt, lyrics, args.duration, seed, args.settings(), args.use_erg_tag)
    assert wav.shape == (2, output_samples(args.duration)), wav.shape
    check_render(wav, out)
    audio_write(out, wav, SAMPLE_RATE)
    lora_text = ", ".join(f"{lora.path.name}@{s:g}" for lora, s in loras) or "none"
    print(out)
    print(f"{wav.shape[-1] / SAMPLE_RATE:.2f} s, {SAMPLE_RATE // 1000} kHz stereo, seed {seed}, {args.steps} steps, "
          f"guidance {args.guidance_scale:g} ({args.cfg_type}), LoRA {lora_text}, {time.monotonic() - start:.1f} s")
    return 0
