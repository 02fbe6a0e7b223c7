"""Language segmentation and detection for lyrics, through LangSegment 0.3.5 over py3langid 0.3.0.

The reference ships a modified copy of LangSegment 0.3.5 (`acestep/language_segmentation/`). Its
segmentation logic is unchanged; the one modification is that the state (filters, last text,
last segments, counts) lives on an instance instead of on the class. We use the published 0.3.5
(`langsegment-backup` on PyPI, the same code as the copy) and write by hand only that difference:
one lock serialises `getTexts` + `getCounts`, because the library keeps them in class attributes.
Both reference paths set the same filter list (`language_filters.default`), so one shared state
gives the same answers as the reference's two instances.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Language code -> language token id in the lyric vocab (reference SUPPORT_LANGUAGES).
SUPPORT_LANGUAGES: dict[str, int] = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294, "tr": 295, "ru": 267,
    "cs": 293, "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412, "hu": 5753, "ko": 6152, "hi": 6680,
}  # fmt: skip

# The languages py3langid may report (reference `language_filters.default`, also the dataset's list).
LANGUAGE_FILTERS: list[str] = (
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi hr "
    "ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc "
    "or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh zu"
).split()

_LOCK = threading.Lock()
_LANGSEGMENT = None


@dataclass(frozen=True)
class Segment:
    """One run of text in one language, as LangSegment returns it (text may gain spaces)."""

    lang: str
    text: str
    score: float


def _langsegment():
    """The LangSegment module with our filters set (imported lazily: loading langid takes ~1 s)."""
    global _LANGSEGMENT
    if _LANGSEGMENT is None:
        import LangSegment  # langsegment-backup==0.3.5.post1

        LangSegment.setfilters(LANGUAGE_FILTERS)
        _LANGSEGMENT = LangSegment
    return _LANGSEGMENT


def segment(text: str) -> tuple[list[Segment], list[tuple[str, int]]]:
    """Split `text` into language runs and count characters per language.

    Returns:
        (segments, counts): `counts` is [(lang, characters)] sorted by count, descending, with
        Chinese characters counted twice (LangSegment `getCounts`).
    """
    with _LOCK:
        ls = _langsegment()
        ls.setfilters(LANGUAGE_FILTERS)  # a no-op unless someone else changed the shared filters
        segments = [Segment(s["lang"], s["text"], float(s["score"])) for s in ls.getTexts(text)]
        counts = [(lang, int(n)) for lang, n in ls.getCounts()]
    return segments, counts


def detect_language(text: str) -> str:
    """Main language of `text`: the most frequent, or the runner-up when that is English.

    Mirrors `get_lang` of the reference pipeline and dataset (any failure -> "en").
    """
    try:
        counts = segment(text)[1]
        lang = counts[0][0]
        if len(counts) > 1 and lang == "en":
            lang = counts[1][0]
    except Exception:  # noqa: BLE001 - the reference falls back to English on any error
        lang = "en"
    return lang


def to_supported(lang: str) -> str:
    """Map a detected code to one the tokenizer encodes: unsupported -> en, zh* -> zh, spa -> es.

    Same order as the reference: a code outside SUPPORT_LANGUAGES becomes "en" first.
    """
    if lang not in SUPPORT_LANGUAGES:
        lang = "en"
    if "zh" in lang:
        lang = "zh"
    if "spa" in lang:
        lang = "es"
    return lang
