"""ACE-Step v1 lyric tokenizer: language detection, per-language cleaning, BPE, both reference paths.

`LyricTokenizer.tokenize_dataset` is the training path (preprocess), `tokenize_pipeline` the
inference path (generate); `find_lyric_vocab` locates the BPE vocab acetune does not ship.
"""

from .language import SUPPORT_LANGUAGES, detect_language, segment, to_supported
from .tokenizer import (
    LINE_BREAK_ID,
    NO_LYRICS_ID,
    START_ID,
    UNK_ID,
    LyricTokenizer,
    LyricTokens,
    UnsupportedLyricsLanguage,
)
from .vocab import LYRIC_VOCAB_SHA256, LYRIC_VOCAB_URL, find_lyric_vocab, user_cache_dir

__all__ = [
    "LINE_BREAK_ID", "LYRIC_VOCAB_SHA256", "LYRIC_VOCAB_URL", "NO_LYRICS_ID", "START_ID", "SUPPORT_LANGUAGES",
    "UNK_ID", "LyricTokenizer", "LyricTokens", "UnsupportedLyricsLanguage", "detect_language",
    "find_lyric_vocab", "segment", "to_supported", "user_cache_dir",
]
