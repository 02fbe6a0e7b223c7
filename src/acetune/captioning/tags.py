"""Turn a model's answer into clean tags and lyrics; merge the answers for a song's chunks.

Rules for tags: lower-case, trimmed of quotes/bullets/punctuation, whitespace collapsed,
de-duplicated (first occurrence kept), numbers/BPM dropped (measured by `acetune.audio.analysis`), and
stray prose removed: anything longer than `MAX_TAG_WORDS` words or that reads like a sentence
("this track features ...") is not a tag. Vocal tags get " vocal" appended when they do not
already say so ("female" -> "female vocal"), as the fork does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from acetune.captioning.prompts import TAG_FIELDS

MAX_TAG_WORDS = 4
_PROSE = re.compile(r"\b(this|these|the (audio|song|track|music|recording)|i |i'm|it is|it's|there is|there are|"
                    r"sounds like|features?|here is|here are|json|answer|listen)\b")
_NUMBERISH = re.compile(r"\d|\bbpm\b")
_STRIP = " \t\r\n\"'`*-•·.;:!?()[]{}<>"
_STRUCTURE = re.compile(r"^\s*[\[(]\s*([a-z][a-z0-9 \-]*?)\s*[\])]\s*:?\s*$", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_VOCAL_WORDS = ("vocal", "voice", "singer", "choir", "rap", "spoken", "humming", "vocals")


@dataclass
class Caption:
    """A parsed answer. `has_vocal` is None when the answer did not say."""

    tags: list[str] = field(default_factory=list)
    has_vocal: bool | None = None
    lyrics: str = ""
    parsed_json: bool = False


def clean_tag(raw: str) -> str | None:
    """One candidate tag -> normalised tag, or None if it is not a tag."""
    t = "".join(ch for ch in str(raw) if ch.isprintable()).lower()
    t = re.sub(r"\s+", " ", t).strip(_STRIP).strip()
    if not t or not any(ch.isalpha() for ch in t):
        return None
    if len(t.split()) > MAX_TAG_WORDS or _PROSE.search(t) or _NUMBERISH.search(t):
        return None
    return t


def clean_tags(raw: Iterable[str]) -> list[str]:
    """Normalise, drop non-tags, de-duplicate keeping the first occurrence."""
    seen: dict[str, None] = {}
    for r in raw:
        t = clean_tag(r)
        if t is not None and t not in seen:
            seen[t] = None
    return list(seen)


def format_prompt(tags: list[str]) -> str:
    """The prompt sidecar's text: tags joined by ", ", no trailing newline (the fork's format)."""
    return ", ".join(tags)


def clean_lyrics(text: str) -> str:
    """Trim lines, put structure tags in "[verse]" form on their own lines, collapse blank runs."""
    lines = []
    for line in str(text).replace("\\n", "\n").splitlines():
        line = line.strip()
        m = _STRUCTURE.match(line)
        if m:
            if lines and lines[-1] != "":
                lines.append("")  # a blank line before each section, as in the fork's examples
            lines.append(f"[{m.group(1).lower()}]")
        elif line or (lines and lines[-1] != ""):
            lines.append(line)
    return "\n".join(lines).strip()


def _json_object(text: str) -> dict | None:
    """The first JSON object in `text` (fences removed; a truncated tail closed if possible)."""
    body = _FENCE.sub("", text).strip()
    start = body.find("{")
    if start < 0:
        return None
    body = body[start:]
    candidates = [body[: body.rfind("}") + 1]] if "}" in body else []
    tail = body.rstrip().rstrip(",")  # answer cut by max_new_tokens: close the string/list/object
    if tail.count('"') % 2:
        tail += '"'
    candidates.append(tail + ("]" if tail.count("[") > tail.count("]") else "") + "}")
    for c in candidates:
        try:
            data = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _as_list(v) -> list[str]:
    if isinstance(v, str):
        return [p for p in re.split(r"[,;\n]", v)]
    if isinstance(v, list | tuple):
        return [str(x) for x in v if isinstance(x, str | int | float)]
    return []


def _vocal_tag(t: str) -> str:
    return t if any(w in t for w in _VOCAL_WORDS) else f"{t} vocal"


def parse_response(text: str) -> Caption:
    """A model answer (JSON as asked, or loose text) -> Caption with cleaned tags and lyrics."""
    data = _json_object(text)
    if data is None:  # free text: take comma/line separated pieces that survive the tag rules
        pieces = re.split(r"[,;\n]", _FENCE.sub("", text))
        return Caption(tags=clean_tags(p.rsplit(":", 1)[-1] for p in pieces))  # "Here are tags: rock" -> "rock"
    raw: list[str] = []
    for name in TAG_FIELDS:
        values = _as_list(data.get(name, []))
        raw += [_vocal_tag(v.strip()) for v in values if v.strip()] if name == "vocal" else values
    has_vocal = data.get("has_vocal")
    if isinstance(has_vocal, str):
        has_vocal = has_vocal.strip().lower() in ("true", "yes", "1")
    elif not isinstance(has_vocal, bool):
        has_vocal = None
    lyrics = clean_lyrics(data.get("lyrics") or "") if isinstance(data.get("lyrics"), str) else ""
    return Caption(tags=clean_tags(raw), has_vocal=has_vocal, lyrics=lyrics, parsed_json=True)


def merge_captions(parts: list[Caption]) -> Caption:
    """Captions of consecutive chunks of one song -> one caption.

    Tags: union, ordered by how many chunks named them (ties: first seen). Voice: any chunk.
    Lyrics: the chunks' lyrics in order, separated by a blank line.
    """
    votes: dict[str, int] = {}
    for p in parts:
        for t in p.tags:
            votes[t] = votes.get(t, 0) + 1
    order = {t: i for i, t in enumerate(votes)}
    tags = sorted(votes, key=lambda t: (-votes[t], order[t]))
    flags = [p.has_vocal for p in parts if p.has_vocal is not None]
    has_vocal = any(flags) if flags else None
    lyrics = "\n\n".join(p.lyrics for p in parts if p.lyrics)
    return Caption(tags=tags, has_vocal=has_vocal, lyrics=lyrics, parsed_json=any(p.parsed_json for p in parts))
