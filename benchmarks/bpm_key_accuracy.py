"""How often `acetune.audio.analysis` finds the tempo and key of generated clips whose truth is known.

Each clip is a few bars of a chord progression in one of the 24 keys (bass, sustained pad, a
melody on eighth notes, random additive timbres) over a drum pattern at a tempo drawn from
60-180 BPM; a fifth of the clips have no drums. Tempo counts as a hit within 2 BPM; a result within
2 BPM of double or half the tempo is an octave error, counted apart. Key counts only when exact.
Goals: 95% tempo hits (exact + octave) and 80% exact keys.

    OMP_NUM_THREADS=1 python benchmarks/bpm_key_accuracy.py            # 120 clips of 20 s
    OMP_NUM_THREADS=1 python benchmarks/bpm_key_accuracy.py --clips 48 --seconds 12

These are synthetic clips: real mixes (tempo drift, modal harmony, detuned masters) score lower.
`--hard` adds harder material: the four demo songs (`acetune demo`) at 5 s and 20 s, swung eighths,
half-time grooves (snare on 3), double-time hats (sixteenths), dorian and mixolydian harmony (the
truth is the tonic with its third: D dorian counts as D minor) and 1.5 s of silence at both ends.
Octave errors (2x, 0.5x) and key confusions (relative, parallel, a fifth away) are counted apart.

    OMP_NUM_THREADS=1 python benchmarks/bpm_key_accuracy.py --hard --clips 48 --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

SR = 22050
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
MINOR_STEPS = (0, 2, 3, 5, 7, 8, 10)  # natural minor; V is raised to major below, as usual
MODE_STEPS = {"dorian": (0, 2, 3, 5, 7, 9, 10), "mixolydian": (0, 2, 4, 5, 7, 9, 10)}
MODE_PROGRESSIONS = {"dorian": ((0, 3, 0, 3), (0, 6, 3, 0)), "mixolydian": ((0, 6, 3, 0), (0, 3, 6, 0))}
GROOVES = ("straight", "swing", "half", "double")
MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4))
MINOR_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 2, 6), (0, 3, 6, 4), (0, 6, 5, 4), (0, 0, 3, 4))
GOAL_TEMPO, GOAL_KEY = 0.95, 0.80


@dataclass
class Case:
    bpm: float
    tonic: int  # pitch class, C = 0
    minor: bool
    seed: int
    seconds: float = 20.0
    drums: bool = True
    groove: str = "straight"  # GROOVES
    mode: str = ""  # "" (major/minor by `minor`), "dorian" or "mixolydian"
    silence: float = 0.0  # seconds of silence added at both ends


def _tone(freq: float, dur: float, harmonics: np.ndarray, decay: float) -> np.ndarray:
    t = np.arange(int(dur * SR)) / SR
    sig = sum(a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics) if freq * (k + 1) < SR / 2)
    env = np.exp(-t * decay) * np.minimum(1.0, t / 0.005)  # 5 ms attack
    return (sig * env).astype(np.float32)


def _noise(rng, dur: float, decay: float, highpass: bool) -> np.ndarray:
    n = rng.standard_normal(int(dur * SR)).astype(np.float32)
    if highpass:
        n = np.diff(n, prepend=0.0)
    return n * np.exp(-np.arange(n.size) / SR * decay)


def synth_clip(case: Case) -> np.ndarray:
    """(T,) float32 at `SR`: the clip described by `case`, peak-normalised to 0.9."""
    rng = np.random.default_rng(case.seed)
    beat = 60.0 / case.bpm
    n = int(case.seconds * SR)
    out = np.zeros(n + SR * 4, dtype=np.float32)
    steps = MODE_STEPS.get(case.mode) or (MINOR_STEPS if case.minor else MAJOR_STEPS)
    progs = MODE_PROGRESSIONS.get(case.mode) or (MINOR_PROGRESSIONS if case.minor else MAJOR_PROGRESSIONS)
    swing = beat / 6 if case.groove == "swing" else 0.0  # the off-beat eighth lands 2/3 through the beat
    prog = progs[rng.integers(len(progs))]
    timbres = [rng.uniform(0.1, 1.0, int(rng.integers(3, 9))) for _ in range(3)]  # harmonic amplitudes
    offset = rng.uniform(0.0, beat)

    def add(sig: np.ndarray, at: float, gain: float) -> None:
        i = int(at * SR)
        if i < n:
            out[i:i + sig.size] += gain * sig[: out.size - i]

    def pitch(degree: int, octave: int) -> float:
        semis = case.tonic + steps[degree % 7] + 12 * (degree // 7)
        return 440.0 * 2 ** ((semis + 12 * octave - 57) / 12)  # octave 4 = C4..B4

    bar = 0
    t = offset
    while t < case.seconds:
        root = prog[bar % len(prog)]
        chord = [root, root + 2, root + 4]
        # harmonic minor: the dominant chord (degree 4) gets a major third (raised 7th degree)
        raised = case.minor and not case.mode and root % 7 == 4
        for d in chord:
            f = pitch(d, 3)
            if raised and d % 7 == 6:
                f *= 2 ** (1 / 12)
            add(_tone(f, 4 * beat, timbres[0], 0.6), t, 0.10)  # pad, one bar
        for b in (0, 2):
            add(_tone(pitch(root, 2), beat * 1.5, timbres[1], 3.0), t + b * beat, 0.25)  # bass
        for e in range(8):  # melody on eighths, mostly chord tones
            if rng.random() < 0.7:
                d = int(rng.choice(chord)) if rng.random() < 0.7 else int(rng.integers(0, 7))
                add(_tone(pitch(d, 4), beat * 0.5, timbres[2], 6.0), t + e * beat / 2 + swing * (e % 2), 0.12)
        if case.drums:
            kick = _tone(55.0, 0.25, np.array([1.0]), 18.0)
            for b in range(4):
                if case.groove == "half":  # half-time feel: kick on 1, snare on 3
                    if b == 0:
                        add(kick, t, 0.8)
                    elif b == 2:
                        add(_noise(rng, 0.2, 25.0, False), t + b * beat, 0.25)
                elif b in (0, 2):
                    add(kick, t + b * beat, 0.8)
                else:
                    add(_noise(rng, 0.2, 25.0, False), t + b * beat, 0.25)  # snare
            hats = 16 if case.groove == "double" else 8
            for e in range(hats):
                add(_noise(rng, 0.05, 80.0, True), t + e * 4 * beat / hats + swing * (e % 2 and hats == 8), 0.08)
        t += 4 * beat
        bar += 1
    y = out[:n]
    y += 0.003 * rng.standard_normal(n).astype(np.float32)
    y = (0.9 * y / np.abs(y).max()).astype(np.float32)
    pad = np.zeros(int(case.silence * SR), dtype=np.float32)
    return np.concatenate([pad, y, pad])


def make_hard_cases(count: int, seconds: float, seed: int = 0) -> list[Case]:
    """`count` cases cycling through grooves and modes; every third has silence at both ends."""
    cases = make_cases(count, seconds, seed)
    modes = ("", "", "dorian", "mixolydian")
    for i, c in enumerate(cases):
        c.groove, c.mode, c.silence = GROOVES[i % 4], modes[(i // 4) % 4], 1.5 if i % 3 == 0 else 0.0
        c.minor = c.minor if not c.mode else c.mode == "dorian"
    return cases


def key_verdict(estimate: str | None, truth: str) -> str:
    """'exact', 'relative' (same notes, other mode), 'parallel' (same tonic), 'fifth' (a fifth away,
    same mode), else 'other'."""
    from acetune.audio.analysis import PITCH_NAMES

    if estimate is None:
        return "other"
    if estimate == truth:
        return "exact"
    (et, em), (tt, tm) = estimate.split(), truth.split()
    e, t = PITCH_NAMES.index(et), PITCH_NAMES.index(tt)
    if em != tm and (e - t) % 12 == (9 if tm == "major" else 3):
        return "relative"
    if e == t:
        return "parallel"
    if em == tm and (e - t) % 12 in (5, 7):
        return "fifth"
    return "other"


def make_cases(count: int, seconds: float, seed: int = 0) -> list[Case]:
    """`count` cases cycling through all 24 keys, tempi spread evenly over 60-180 BPM (shuffled)."""
    rng = np.random.default_rng(seed)
    tempi = np.linspace(60.0, 180.0, count)
    rng.shuffle(tempi)
    cases = []
    for i in range(count):
        key = i % 24
        cases.append(Case(bpm=float(round(tempi[i], 1)), tonic=key % 12, minor=key >= 12, seed=seed * 10007 + i,
                          seconds=seconds, drums=(i % 5 != 4)))
    return cases


def tempo_verdict(estimate: float | None, truth: float, tol: float = 2.0) -> str:
    """'hit' within tol BPM, 'octave' within tol of 2x or 0.5x (tol scaled), else 'miss'."""
    if estimate is None:
        return "miss"
    if abs(estimate - truth) <= tol:
        return "hit"
    if abs(estimate - 2 * truth) <= 2 * tol or abs(estimate - truth / 2) <= tol / 2 + 0.5:
        return "octave"
    return "miss"


def demo_clips(seconds: tuple[float, ...] = (5.0, 20.0)) -> list[tuple[str, np.ndarray, int, float, str]]:
    """(name, audio at 16 kHz, rate, true BPM, true key) of the demo songs, rendered as `acetune demo` does."""
    import torch

    from acetune.audio.resample import resample
    from acetune.dataset.demo_songs import SONGS, render_song

    out = []
    for secs in seconds:
        for i, song in enumerate(SONGS):
            wav = torch.from_numpy(render_song(song, secs, seed=i)).mean(dim=0, keepdim=True)
            out.append((f"demo {song.stem} {secs:g} s", resample(wav, 48000, 16000)[0].numpy(), 16000, float(song.bpm),
                        song.key))
    return out


def evaluate(cases: list[Case], extra: list | None = None) -> dict:
    """Run the analysis on every case (and `extra` (name, audio, rate, bpm, key) clips); rates and failures."""
    from acetune.audio.analysis import estimate_bpm, estimate_key, key_name

    clips = [(f"{c.bpm} BPM {c.groove} {c.mode or ('minor' if c.minor else 'major')} drums={c.drums}",
              synth_clip(c), SR, c.bpm, key_name(c.tonic + (12 if c.minor else 0))) for c in cases]
    tempo = {"hit": 0, "octave": 0, "miss": 0}
    key = {"exact": 0, "relative": 0, "parallel": 0, "fifth": 0, "other": 0}
    failures = []
    for name, y, sr, bpm_true, key_true in clips + list(extra or []):
        bpm = estimate_bpm(y, sr)
        found, _ = estimate_key(y, sr)
        tv, kv = tempo_verdict(bpm, bpm_true), key_verdict(found, key_true)
        tempo[tv] += 1
        key[kv] += 1
        if tv != "hit" or kv != "exact":
            failures.append((name, bpm, found, key_true, tv, kv))
    n = sum(tempo.values())
    return {"n": n, "tempo_hit": tempo["hit"] / n, "tempo_octave": tempo["octave"] / n,
            "tempo_miss": tempo["miss"] / n, "tempo_hit_or_octave": (tempo["hit"] + tempo["octave"]) / n,
            "key_exact": key["exact"] / n, **{f"key_{k}": v / n for k, v in key.items() if k != "exact"},
            "failures": failures}


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: 24 clips of 8 s (one per key)."""
    clips, seconds = (24, 8.0) if quick else (120, 20.0)
    r = evaluate(make_cases(clips, seconds))
    config = f"{clips} synthetic clips of {seconds:g} s, 60-180 BPM, 24 keys"
    return [("tempo hit or octave (goal 95%)", config, 100 * r["tempo_hit_or_octave"], "%"),
            ("tempo within 2 BPM", config, 100 * r["tempo_hit"], "%"),
            ("key exact (goal 80%)", config, 100 * r["key_exact"], "%")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=120)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="the harder set (grooves, modes, silence, demo songs)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.hard:
        r = evaluate(make_hard_cases(a.clips, a.seconds, a.seed), demo_clips())
        what = f"{a.clips} hard clips of {a.seconds:g} s (+1.5 s silence on a third) + 8 demo clips"
    else:
        r = evaluate(make_cases(a.clips, a.seconds, a.seed))
        what = f"{r['n']} clips of {a.seconds:g} s, 60-180 BPM, all 24 keys"
    dt = time.perf_counter() - t0
    print(f"{what} ({dt:.0f} s, {dt / r['n']:.2f} s/clip)")
    print("| metric | rate | goal |")
    print("|---|---|---|")
    print(f"| tempo within 2 BPM | {r['tempo_hit']:.1%} | |")
    print(f"| tempo octave error (2x / 0.5x) | {r['tempo_octave']:.1%} | |")
    print(f"| tempo hit or octave | {r['tempo_hit_or_octave']:.1%} | {GOAL_TEMPO:.0%} |")
    print(f"| tempo miss | {r['tempo_miss']:.1%} | |")
    print(f"| key exact | {r['key_exact']:.1%} | {GOAL_KEY:.0%} |")
    for k in ("relative", "parallel", "fifth", "other"):
        print(f"| key: {k} {'key' if k != 'other' else 'wrong'} | {r['key_' + k]:.1%} | |")
    for name, bpm, key, truth, tv, kv in r["failures"][:30]:
        print(f"  {name}, {truth} -> {bpm and round(bpm, 1)} BPM ({tv}), {key} ({kv})", file=sys.stderr)
    ok = r["tempo_hit_or_octave"] >= GOAL_TEMPO and r["key_exact"] >= GOAL_KEY
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
