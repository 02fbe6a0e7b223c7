"""Golden case `v1_lyrics`: lyric token ids of both reference paths vs ../shared/golden/lyrics.

Checks every sample of `lyrics_golden.json` with the vocab stored beside it: the dataset path
(training, `tokenize_dataset`, including the `ValueError` for an unsupported main language), the
pipeline path (inference, `tokenize_pipeline`), the language decisions behind them (LangSegment
segments and counts on the whole text; the per-line language) and every single tokenizer call.
The table has one summary row per check, valued by the number of differing samples, plus one row
per failing sample so a regression names the song.
"""

from __future__ import annotations

import json
from pathlib import Path

from acetune.models.v1.lyrics import LyricTokenizer, UnsupportedLyricsLanguage, detect_language, segment
from acetune.parity.registry import Row, golden_case, row_exact

CASE = "v1_lyrics"


def _dataset_ids(tok: LyricTokenizer, text: str) -> list[int] | str:
    try:
        return tok.tokenize_dataset(text)
    except UnsupportedLyricsLanguage as err:
        return f"ValueError: {err}"  # the golden stores the reference's exception this way


def _segments_match(sample: dict) -> bool:
    ref = sample["dataset"]["get_lang"]
    segments, counts = segment(sample["text"])
    mine = [{"lang": s.lang, "text": s.text, "score": round(s.score, 3)} for s in segments]
    ref_segments = [{**s, "score": round(s["score"], 3)} for s in ref["segments"]]
    return mine == ref_segments and [list(c) for c in counts] == [list(c) for c in ref["counts"]]


def _calls_match(tok: LyricTokenizer, sample: dict) -> bool:
    calls = sample["dataset"].get("encode_calls", []) + sample["pipeline"]["encode_calls"]
    return all(tok.encode(c["text"], c["lang"]) == c["ids"] for c in calls)


def _ids_row(name: str, mine, ref) -> Row:
    if isinstance(mine, str) or isinstance(ref, str):  # an error on either side
        return Row(CASE, name, "exact", 0.0 if mine == ref else float("inf"), 0.0)
    return row_exact(CASE, name, mine, ref)


@golden_case(CASE, folder="lyrics")
def lyrics_case(golden: Path) -> list[Row]:
    folder = Path(golden) / "lyrics"
    data = json.loads((folder / "lyrics_golden.json").read_text(encoding="utf-8"))
    tok = LyricTokenizer.from_vocab(folder / "vocab.json")
    samples = data["samples"]
    failures: list[Row] = []
    counts = {"dataset": 0, "pipeline": 0, "segments": 0, "line_lang": 0, "calls": 0}

    for s in samples:
        ref_ds = s["dataset"]["token_ids"] if "token_ids" in s["dataset"] else s["dataset"]["error"]
        row = _ids_row(f"dataset ids {s['id']}", _dataset_ids(tok, s["text"]), ref_ds)
        if not row.passed:
            counts["dataset"] += 1
            failures.append(row)
        row = _ids_row(f"pipeline ids {s['id']}", tok.tokenize_pipeline(s["text"]), s["pipeline"]["token_ids"])
        if not row.passed:
            counts["pipeline"] += 1
            failures.append(row)
        if not _segments_match(s):
            counts["segments"] += 1
            failures.append(Row(CASE, f"dataset segments+counts {s['id']}", "exact", 1.0, 0.0))
        wrong = sum(detect_language(x["line"]) != x["detected"] for x in s["pipeline"]["get_lang_per_line"])
        if wrong:
            counts["line_lang"] += 1
            failures.append(Row(CASE, f"pipeline line languages {s['id']}", "exact", float(wrong), 0.0))
        if not _calls_match(tok, s):
            counts["calls"] += 1
            failures.append(Row(CASE, f"encode calls {s['id']}", "exact", 1.0, 0.0))

    n = len(samples)
    summary = [
        Row(CASE, f"dataset ids: samples differing (of {n})", "exact", float(counts["dataset"]), 0.0),
        Row(CASE, f"pipeline ids: samples differing (of {n})", "exact", float(counts["pipeline"]), 0.0),
        Row(CASE, f"dataset segments+counts: differing (of {n})", "exact", float(counts["segments"]), 0.0),
        Row(CASE, f"pipeline line languages: differing (of {n})", "exact", float(counts["line_lang"]), 0.0),
        Row(CASE, f"encode calls: samples differing (of {n})", "exact", float(counts["calls"]), 0.0),
    ]
    return summary + failures
