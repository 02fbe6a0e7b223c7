"""How long the studio's songs-table queries take for a large dataset (server side, one page per answer).

    python benchmarks/studio_table.py            # 1,000 and 10,000 songs
    python benchmarks/studio_table.py --quick    # 1,000 songs

Builds a `SongIndex` with synthetic rows (no audio files: the query never touches disk) and times
the requests the page makes: first page, a search, a filter, a sort on a numeric column with
unknowns, a late page. `rows(quick)` feeds benchmarks/run.py.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from acetune.studio.songs import SongIndex, SongRow

QUERIES = {
    "first page (sort by name)": {},
    "search 'piano'": {"q": "piano"},
    "filter: with problems": {"filter": "problems"},
    "sort by BPM, descending": {"sort": "bpm", "desc": True},
    "page 15 of 50-row pages": {"page": 15},
}
TAGS = ("rock", "piano", "lofi", "female vocals", "synthwave", "drums", "guitar", "jazz", "ambient", "trap")


def make_index(n: int, seed: int = 0) -> SongIndex:
    rng = random.Random(seed)
    index = SongIndex(Path("/nonexistent/songs"), Path("/nonexistent/work"))
    for i in range(n):
        tags = rng.sample(TAGS, 4)
        row = SongRow(id=f"album{i % 40}/song_{i:05d}.flac", name=f"song_{i:05d}.flac", folder=f"album{i % 40}",
                      duration=rng.uniform(60, 400), sample_rate=44100, channels=2,
                      bpm=None if rng.random() < 0.2 else rng.uniform(60, 180), keyscale="A minor",
                      caption=", ".join(tags), tags=tags, lyrics="la la la\n" * 30 if rng.random() < 0.6 else "",
                      lyrics_status="lyrics", problems=["clipped"] if rng.random() < 0.05 else [])
        index.rows[row.id] = row
    return index


def time_query(index: SongIndex, kw: dict, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = index.query(per_page=50, **kw)
        best = min(best, time.perf_counter() - t)
        assert len(out["rows"]) <= 50
    return best * 1000


def rows(quick: bool = False) -> list[tuple[str, str, float, str]]:
    out = []
    for n in (1000,) if quick else (1000, 10000):
        index = make_index(n)
        for name, kw in QUERIES.items():
            out.append((f"studio table: {name}", f"{n} songs", round(time_query(index, kw), 2), "ms"))
    return out


if __name__ == "__main__":
    table = rows("--quick" in sys.argv)
    width = max(len(r[0]) for r in table)
    print(f"{'query'.ljust(width)}  {'songs':>12}  {'best of 5':>10}")
    for what, config, figure, unit in table:
        print(f"{what.ljust(width)}  {config:>12}  {figure:>8.2f} {unit}")
