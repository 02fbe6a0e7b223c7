"""How often `acetune.audio.analysis` finds the tempo and key of generated clips whose truth is known.

Each clip is a few bars of a chord progression in one of the 24 keys (bass, sustained pad, a
melody on eighth notes, random additive timbres) over a drum pattern at a tempo drawn from
60-180 BPM; a fifth of the clips have no drums. Tempo counts as a hit within 2 BPM; a result within
2 BPM of double or half the tempo is an octave error, counted apart. Key counts only when exact.
Goals: 95% tempo hits (exact + octave) and 80% exact keys.

    OMP_NUM_THREADS=1 python benchmarks/bpm_key_accuracy.py            # 120 clips of 20 s
    OMP_NUM_THREADS=1 python benchmarks/bpm_key_accuracy.py --clips 48 --seconds 12

These are synthetic clips: real mixes (tempo drift, modal harmony, detuned masters) score lower.
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
    steps = MINOR_STEPS if case.minor else MAJOR_STEPS
    progs = MINOR_PROGRESSIONS if case.minor else MAJOR_PROGRESSIONS
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
        raised = case.minor and root % 7 == 4
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
                add(_tone(pitch(d, 4), beat * 0.5, timbres[2], 6.0), t + e * beat / 2, 0.12)
        if case.drums:
            for b in range(4):
                if b in (0, 2):
                    kick = _tone(55.0, 0.25, np.array([1.0]), 18.0)
                    add(kick, t + b * beat, 0.8)
                else:
                    add(_noise(rng, 0.2, 25.0, False), t + b * beat, 0.25)  # snare
            for e in range(8):
                add(_noise(rng, 0.05, 80.0, True), t + e * beat / 2, 0.08)  # hats
        t += 4 * beat
        bar += 1
    y = out[:n]
    y += 0.003 * rng.standard_normal(n).astype(np.float32)
    return (0.9 * y / np.abs(y).max()).astype(np.float32)


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


def evaluate(cases: list[Case]) -> dict:
    """Run the analysis on every case; returns rates and the failing cases."""
    from acetune.audio.analysis import estimate_bpm, estimate_key, key_name

    counts = {"hit": 0, "octave": 0, "miss": 0}
    key_ok = 0
    failures = []
    for c in cases:
        y = synth_clip(c)
        bpm = estimate_bpm(y, SR)
        key, _ = estimate_key(y, SR)
        verdict = tempo_verdict(bpm, c.bpm)
        counts[verdict] += 1
        truth_key = key_name(c.tonic + (12 if c.minor else 0))
        key_ok += key == truth_key
        if verdict != "hit" or key != truth_key:
            failures.append((c, bpm, key, truth_key, verdict))
    n = len(cases)
    return {"n": n, "tempo_hit": counts["hit"] / n, "tempo_octave": counts["octave"] / n,
            "tempo_miss": counts["miss"] / n, "tempo_hit_or_octave": (counts["hit"] + counts["octave"]) / n,
            "key_exact": key_ok / n, "failures": failures}


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
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    r = evaluate(make_cases(a.clips, a.seconds, a.seed))
    dt = time.perf_counter() - t0
    print(f"{r['n']} clips of {a.seconds:g} s, 60-180 BPM, all 24 keys ({dt:.0f} s, {dt / r['n']:.2f} s/clip)")
    print("| metric | rate | goal |")
    print("|---|---|---|")
    print(f"| tempo within 2 BPM | {r['tempo_hit']:.1%} | |")
    print(f"| tempo octave error (2x / 0.5x) | {r['tempo_octave']:.1%} | |")
    print(f"| tempo hit or octave | {r['tempo_hit_or_octave']:.1%} | {GOAL_TEMPO:.0%} |")
    print(f"| tempo miss | {r['tempo_miss']:.1%} | |")
    print(f"| key exact | {r['key_exact']:.1%} | {GOAL_KEY:.0%} |")
    for c, bpm, key, truth, verdict in r["failures"][:20]:
        print(f"  miss: true {c.bpm:.1f} BPM {truth} drums={c.drums} -> {bpm and round(bpm, 1)} BPM ({verdict}), {key}",
              file=sys.stderr)
    ok = r["tempo_hit_or_octave"] >= GOAL_TEMPO and r["key_exact"] >= GOAL_KEY
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
