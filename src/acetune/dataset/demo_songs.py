"""Short synthetic songs for `acetune demo`: drums, bass, chords and a lead (one sung), with sidecars.

Every song is rendered with numpy additive synthesis (no samples, no downloads) at 48 kHz stereo:

    kick / snare / hi-hat      one-shot drums on a 16-step grid, pattern per song
    bass                       the chord root, one octave down
    chords                     a four-chord progression in the song's key, one chord per bar
    lead                       chord tones on eighth notes, or a vowel-formant "voice" singing the
                               lyrics' vowels (one syllable per beat) for the song with lyrics

`write_demo_songs(folder)` writes `<stem>.wav` plus the woct0rdho fork's sidecars
(`<stem>_prompt.txt` with comma-separated tags including BPM and key; `<stem>_lyrics.txt` for the
sung song), so `acetune build-dataset` reads them like a user's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acetune.audio.io import audio_write
from acetune.dataset.sidecars import sidecar_name

SAMPLE_RATE = 48000
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# vowel -> (formant Hz, bandwidth Hz, gain): a rough sung vowel, enough to sound voice-like
_FORMANTS = {
    "a": ((800, 80, 1.0), (1150, 90, 0.5), (2900, 120, 0.1)),
    "e": ((400, 70, 1.0), (1600, 80, 0.35), (2700, 120, 0.12)),
    "i": ((300, 60, 1.0), (2200, 90, 0.25), (3000, 120, 0.15)),
    "o": ((450, 70, 1.0), (800, 80, 0.45), (2830, 120, 0.05)),
    "u": ((325, 60, 1.0), (700, 70, 0.25), (2530, 120, 0.04)),
}


@dataclass(frozen=True)
class DemoSong:
    """One demo song: what it sounds like and the caption that says so."""

    stem: str
    tags: str  # the caption, without BPM and key (added by `prompt`)
    bpm: int
    tonic: int  # MIDI note of the key's tonic (octave 4)
    minor: bool
    progression: tuple[int, ...]  # scale degrees (0-based), one chord per bar
    chords: str  # timbre names from `_TIMBRES`
    lead: str
    drums: dict[str, str]  # "kick"/"snare"/"hat" -> 16-step pattern ("x" hit, "." rest)
    lyrics: str = ""

    @property
    def key(self) -> str:
        return f"{_NOTE_NAMES[self.tonic % 12]} {'minor' if self.minor else 'major'}"

    @property
    def prompt(self) -> str:
        return f"{self.tags}, {self.bpm} bpm, {self.key}"


SONGS = (
    DemoSong("lofi_rain", "lofi, hip hop, chill, mellow piano, soft drums", 80, 57, True, (0, 5, 2, 6),
             "piano", "epiano", {"kick": "x......x..x.....", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."}),
    DemoSong("neon_drive", "synthwave, electronic, retro, saw pad, square lead", 124, 64, True, (0, 5, 3, 6),
             "saw_pad", "square", {"kick": "x...x...x...x...", "snare": "....x.......x...", "hat": "..x...x...x...x."}),
    DemoSong("river_song", "folk, acoustic guitar, female vocals, warm", 100, 67, False, (0, 4, 5, 3),
             "pluck", "voice", {"kick": "x.......x.......", "snare": "....x.......x...", "hat": "x...x...x...x..."},
             lyrics="[verse]\nwalking down the river\nsinging to the morning light\n"
                    "[chorus]\nhold on, hold on\nwe are shining bright\n"),
    DemoSong("night_funk", "funk, rock, organ, groovy bass, energetic drums", 132, 62, False, (0, 3, 4, 0),
             "organ", "pluck", {"kick": "x..x..x...x.x...", "snare": "....x..x....x...", "hat": "xxxxxxxxxxxxxxxx"}),
)


# ---- instruments -------------------------------------------------------------------------------

def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _envelope(n: int, sr: int, attack: float, decay: float, release: float = 0.02) -> np.ndarray:
    """Linear attack, exponential decay (time constant `decay` s), short linear release: (n,)."""
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)
    tail = min(n, int(release * sr))
    if tail:
        env[-tail:] *= np.linspace(1.0, 0.0, tail)
    return env


# timbre -> (harmonic amplitudes, attack s, decay s, extra decay per harmonic): additive voices
_TIMBRES = {
    "piano": ([1, 0.5, 0.3, 0.2, 0.12, 0.08, 0.05], 0.005, 0.7, 0.35),
    "epiano": ([1, 0.2, 0.25, 0.05, 0.08], 0.004, 0.5, 0.5),
    "saw_pad": ([1 / k for k in range(1, 16)], 0.12, 3.0, 0.0),
    "square": ([1 / k if k % 2 else 0 for k in range(1, 12)], 0.01, 1.2, 0.05),
    "pluck": ([1 / k for k in range(1, 10)], 0.002, 0.35, 0.6),
    "organ": ([1, 0.8, 0.5, 0.4, 0, 0.3, 0, 0.2], 0.01, 4.0, 0.0),
    "bass": ([1, 0.35, 0.12], 0.005, 0.45, 0.3),
}


def tone(freq: float, n: int, sr: int, timbre: str, detune: float = 0.0) -> np.ndarray:
    """One note of an additive timbre: (n,) float64, peak about 1."""
    harmonics, attack, decay, harmonic_decay = _TIMBRES[timbre]
    t = np.arange(n) / sr
    out = np.zeros(n)
    for k, amp in enumerate(harmonics, start=1):
        if amp == 0 or k * freq >= sr / 2 - 1000:
            continue
        fk = k * freq * (1 + detune)
        out += amp * np.sin(2 * np.pi * fk * t + k) * np.exp(-t * harmonic_decay * (k - 1))
    return out * _envelope(n, sr, attack, decay) / sum(abs(a) for a in harmonics) * 2


def sung(freq: float, n: int, sr: int, vowel: str, rng: np.random.Generator) -> np.ndarray:
    """A vowel on `freq` with vibrato: harmonics weighted by the vowel's formants, plus breath: (n,)."""
    t = np.arange(n) / sr
    vibrato = 1 + 0.012 * np.sin(2 * np.pi * 5.5 * t) * np.minimum(1.0, t / 0.25)
    phase = 2 * np.pi * np.cumsum(freq * vibrato) / sr
    out = np.zeros(n)
    for k in range(1, int(4000 // freq) + 1):
        gain = sum(g * np.exp(-(((k * freq) - f) / bw) ** 2 / 2) for f, bw, g in _FORMANTS[vowel])
        out += (gain + 0.02) / np.sqrt(k) * np.sin(k * phase)
    breath = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") * 0.02
    env = np.minimum(1.0, t / 0.04) * np.minimum(1.0, (n / sr - t) / 0.06)
    return (out / (np.abs(out).max() + 1e-9) + breath) * env


def drum(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One drum hit (kick: falling sine; snare: noise + body; hat: high-passed noise): (n,)."""
    if kind == "kick":
        t = np.arange(int(0.35 * sr)) / sr
        freq = 45 + 90 * np.exp(-t / 0.04)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.12)
    if kind == "snare":
        t = np.arange(int(0.2 * sr)) / sr
        noise = np.diff(rng.standard_normal(t.size + 1))
        return (0.5 * noise * np.exp(-t / 0.06) + 0.6 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.04))
    t = np.arange(int(0.06 * sr)) / sr
    noise = np.diff(rng.standard_normal(t.size + 2), n=2)
    return 0.25 * noise * np.exp(-t / 0.015)


# ---- arrangement -------------------------------------------------------------------------------

def _add(mix: np.ndarray, sig: np.ndarray, start: int, gain: float, pan: float) -> None:
    """Mix `sig` into (2, T) `mix` at sample `start`; pan -1 (left) .. 1 (right), equal power."""
    end = min(mix.shape[1], start + sig.size)
    if end <= start:
        return
    angle = (pan + 1) * np.pi / 4
    mix[0, start:end] += gain * np.cos(angle) * sig[: end - start]
    mix[1, start:end] += gain * np.sin(angle) * sig[: end - start]


def _chord(song: DemoSong, degree: int) -> list[int]:
    """MIDI notes of the triad on `degree` of the song's scale."""
    scale = _MINOR if song.minor else _MAJOR
    return [song.tonic + scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def _vowels(lyrics: str) -> list[str]:
    """One vowel per sung word of the lyrics (structure tags skipped), in order."""
    words = re.findall(r"[a-z]+", re.sub(r"\[.*?\]", " ", lyrics.lower()))
    return [next((c for c in w if c in _FORMANTS), "a") for w in words] or ["a"]


def render_song(song: DemoSong, seconds: float, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Render `seconds` of `song`: (2, round(seconds * sr)) float32, peak 0.89 (-1 dBFS)."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sr))
    mix = np.zeros((2, total))
    beat = 60.0 / song.bpm
    step = beat / 4
    hits = {kind: drum(kind, sr, rng) for kind in ("kick", "snare", "hat")}
    gains = {"kick": 0.9, "snare": 0.5, "hat": 0.3}
    pans = {"kick": 0.0, "snare": 0.1, "hat": 0.4}
    vowels = _vowels(song.lyrics)
    for i in range(int(seconds / step) + 1):
        at = int(i * step * sr)
        for kind, pattern in song.drums.items():
            if pattern[i % 16] == "x":
                _add(mix, hits[kind], at, gains[kind], pans[kind])
        bar, pos = divmod(i, 16)
        notes = _chord(song, song.progression[bar % len(song.progression)])
        if pos == 0:  # chord and bass held for the bar
            n = int(16 * step * sr)
            for j, note in enumerate(notes):
                _add(mix, tone(midi_hz(note), n, sr, song.chords, detune=0.002 * j), at, 0.22, -0.5 + 0.5 * j)
        if pos % 4 == 0:  # bass on every beat
            _add(mix, tone(midi_hz(notes[0] - 24), int(beat * sr), sr, "bass"), at, 0.55, 0.0)
        if song.lead == "voice" and pos % 4 == 0:  # one syllable per beat
            note = notes[(pos // 4) % 3] + 12 * (notes[0] < 60)
            syllable = sung(midi_hz(note), int(0.9 * beat * sr), sr, vowels[(i // 4) % len(vowels)], rng)
            _add(mix, syllable, at, 0.45, -0.1)
        elif song.lead != "voice" and pos % 2 == 0 and rng.random() < 0.8:  # eighth-note chord tones
            note = notes[rng.integers(3)] + 12
            _add(mix, tone(midi_hz(note), int(2 * step * sr), sr, song.lead), at, 0.3, 0.3)
    mix = np.tanh(1.2 * mix)  # gentle bus saturation
    return (mix / (np.abs(mix).max() + 1e-9) * 0.89).astype(np.float32)


def write_demo_songs(folder: str | Path, count: int = 4, seconds: tuple[float, ...] = (5.0, 4.0, 6.0, 5.0),
                     seed: int = 0) -> list[Path]:
    """Write the first `count` demo songs as `<stem>.wav` + fork sidecars into `folder`; returns the wavs.

    Song i lasts `seconds[i % len(seconds)]`. The song with lyrics is always included (it replaces the
    last one when `count` would leave it out).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = list(SONGS[:count])
    sung_song = next(s for s in SONGS if s.lyrics)
    if sung_song not in chosen:
        chosen[-1] = sung_song
    paths = []
    for i, song in enumerate(chosen):
        wav = render_song(song, seconds[i % len(seconds)], seed=seed + i)
        paths.append(audio_write(folder / f"{song.stem}.wav", wav, SAMPLE_RATE))
        (folder / sidecar_name("fork", "prompt", song.stem)).write_text(song.prompt + "\n", encoding="utf-8")
        if song.lyrics:
            (folder / sidecar_name("fork", "lyrics", song.stem)).write_text(song.lyrics, encoding="utf-8")
    return paths
