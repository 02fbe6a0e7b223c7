"""Lyric text -> token ids for the ACE-Step v1 lyric encoder, on both of the reference's paths.

The reference tokenises lyrics in two different ways that agree on only 11 of the 80 golden songs:

- **dataset path** (training; `Text2MusicDataset.tokenize_lyrics_map` -> `tokenize_lyrics`):
  LangSegment runs on the whole text; the language with most characters must be supported (else
  `ValueError`, and the reference dataset silently draws another song); every line of every
  segment is encoded in that main language and re-encoded in the segment's own language if the
  result holds `[UNK]`. acetune's preprocess stage uses this path.
- **pipeline path** (inference; `ACEStepPipeline.tokenize_lyrics`): one language per stripped raw
  line. acetune's generate stage uses this path.

Both start with `[START]` (261) and end every line with `[SPACE]` (2, the line-break token); a
line matching `\\[.*?\\]` at its start (a structure tag) is encoded as English.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from .cleaners import clean_text
from .language import SUPPORT_LANGUAGES, detect_language, segment, to_supported
from .vocab import find_lyric_vocab

logger = logging.getLogger(__name__)

START_ID = 261  # [START], first token of every lyric sequence
LINE_BREAK_ID = 2  # [SPACE]: also what the reference appends after each line and for blank lines
UNK_ID = 1  # [UNK]
NO_LYRICS_ID = 0  # [STOP]: the whole sequence is [0] for instrumentals / empty lyrics
STRUCTURE_PATTERN = re.compile(r"\[.*?\]")  # reference `structure_pattern`, used with .match
# Text2MusicDataset.tokenize_lyrics_map drops lyrics that are really a caption prompt.
_PROMPT_AS_LYRICS = re.compile(r"write a .* song that genre is")


class UnsupportedLyricsLanguage(ValueError):
    """Dataset path: the main language of the lyrics has no token (reference `ValueError`)."""

    def __init__(self, language: str):
        self.language = language
        super().__init__(f"Unsupported language: {language}")


@dataclass
class LyricTokens:
    """What preprocess needs for one song: ids (None = the reference would skip the song) + warnings."""

    ids: list[int] | None
    language: str
    warnings: list[str] = field(default_factory=list)


class LyricTokenizer:
    """The reference `VoiceBpeTokenizer` plus the two lyric paths around it.

    Build with `LyricTokenizer.from_vocab(path)` (see `find_lyric_vocab` to locate the file).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer` (BPE, Whitespace pre-tokenizer)
        self.line_errors: list[str] = []  # lines the last call had to drop (reference logs them)

    @classmethod
    def from_vocab(cls, path: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None):
        """Load the BPE vocab from `path`, else next to `checkpoint_dir`, else the cache / download."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(find_lyric_vocab(path, checkpoint_dir))))

    # ---- one piece of text in one language (reference VoiceBpeTokenizer.encode) ----

    def encode(self, text: str, lang: str) -> list[int]:
        """Clean `text` for `lang`, prefix the language token, spaces -> [SPACE], BPE.

        Raises:
            NotImplementedError: no cleaner for `lang` (callers map languages first).
        """
        lang = lang.split("-")[0]  # region suffixes are dropped
        text = clean_text(text, lang)
        tag = "zh-cn" if lang == "zh" else lang
        return self.tokenizer.encode(f"[{tag}]{text}".replace(" ", "[SPACE]")).ids

    def decode(self, ids) -> str:
        """Readable text for debugging (reference `VoiceBpeTokenizer.decode`)."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False).replace(" ", "")
        return text.replace("[SPACE]", " ").replace("[STOP]", "")

    def _encode_line(self, ids: list[int], line: str, lang: str, retry_lang: str | None = None) -> None:
        """Append a line's ids + line break; a failing line is dropped and recorded, as the reference does."""
        try:
            if STRUCTURE_PATTERN.match(line):
                line_ids = self.encode(line, "en")
            else:
                line_ids = self.encode(line, lang)
                if retry_lang is not None and UNK_ID in line_ids:
                    line_ids = self.encode(line, retry_lang)  # unknown token: try the segment's language
        except Exception as err:  # noqa: BLE001 - the reference logs and skips the line
            self.line_errors.append(f"line {line!r} ({lang}): {err}")
            logger.debug("lyric line dropped: %r (%s): %s", line, lang, err)
            return
        ids += line_ids + [LINE_BREAK_ID]

    # ---- training path ----

    def tokenize_dataset(self, text: str) -> list[int]:
        """Training ids (reference `Text2MusicDataset.tokenize_lyrics_map` on `norm_lyrics`).

        Empty lyrics, or a caption prompt pasted as lyrics, give [0].

        Raises:
            UnsupportedLyricsLanguage: the main language is not supported (the reference raises
                `ValueError` and its dataset draws another song instead).
        """
        self.line_errors = []
        if _PROMPT_AS_LYRICS.search(text) or not text.strip():
            return [NO_LYRICS_ID]
        segments, counts = segment(text)
        main = counts[0][0] if counts else "en"
        main = main or "en"
        if main not in SUPPORT_LANGUAGES:
            raise UnsupportedLyricsLanguage(main)
        ids = [START_ID]
        for seg in segments:
            seg_lang = to_supported(seg.lang)
            for line in seg.text.split("\n"):  # LangSegment may have split one raw line in two
                if not line.strip():
                    ids.append(LINE_BREAK_ID)
                    continue
                self._encode_line(ids, line, main, retry_lang=seg_lang)
        return ids

    def tokenize_dataset_checked(self, text: str, song: str = "") -> LyricTokens:
        """`tokenize_dataset` that never raises for content, with warnings naming `song` for preprocess.

        `ids` is None when the reference would skip the song (unsupported main language).
        """
        name = song or "<lyrics>"
        if _PROMPT_AS_LYRICS.search(text) or not text.strip():
            why = "no lyrics" if not text.strip() else "lyrics look like a caption prompt"
            return LyricTokens([NO_LYRICS_ID], "", [f"{name}: {why}; encoded as instrumental ([0])"])
        try:
            ids = self.tokenize_dataset(text)
        except UnsupportedLyricsLanguage as err:
            return LyricTokens(None, err.language, [
                f"{name}: lyrics are mostly in '{err.language}', which ACE-Step v1 cannot encode; "
                "the reference skips such songs in training (write the lyrics in a supported language, "
                "or leave them empty for an instrumental)"])
        except Exception as err:  # noqa: BLE001 - segmentation failure: never crash mid-dataset
            return LyricTokens(None, "", [f"{name}: lyrics could not be segmented ({err}); song skipped"])
        return LyricTokens(ids, detect_main_language(text), self._content_warnings(name, ids))

    # ---- inference path ----

    def tokenize_pipeline(self, text: str) -> list[int]:
        """Inference ids (reference `ACEStepPipeline.tokenize_lyrics`, as `__call__` uses it).

        Each stripped raw line gets its own language (`detect_language`, unsupported -> en); empty
        lines give [2]. An empty string gives [0] (`__call__` skips tokenisation then).
        """
        self.line_errors = []
        if len(text) == 0:
            return [NO_LYRICS_ID]
        ids = [START_ID]
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                ids.append(LINE_BREAK_ID)
                continue
            self._encode_line(ids, line, to_supported(detect_language(line)))
        return ids

    def tokenize_pipeline_checked(self, text: str, song: str = "") -> LyricTokens:
        """`tokenize_pipeline` with warnings naming `song` (never raises for content)."""
        ids = self.tokenize_pipeline(text)
        warnings = [f"{song or '<lyrics>'}: no lyrics; generating an instrumental ([0])"] if ids == [0] else []
        return LyricTokens(ids, "", warnings + self._content_warnings(song or "<lyrics>", ids))

    def _content_warnings(self, name: str, ids: list[int]) -> list[str]:
        out = [f"{name}: {e}; line dropped" for e in self.line_errors]
        unknown = ids.count(UNK_ID)
        if unknown:
            out.append(f"{name}: {unknown} lyric token(s) could not be mapped and became [UNK] "
                       "(brackets other than structure tags, or characters outside the vocab)")
        return out


def detect_main_language(text: str) -> str:
    """The language the dataset path reports for a song (reference `Text2MusicDataset.get_lang`)."""
    return detect_language(text)
