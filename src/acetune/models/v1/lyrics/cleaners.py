"""Per-language text cleaning before BPE, as the reference lyric tokenizer does it.

Mirrors `VoiceBpeTokenizer.preprocess_text` in the reference `lyric_tokenizer.py` (itself from
coqui XTTS): the 15 "multilingual" languages get `multilingual_cleaners` (quotes removed, Turkish
capitals folded, lower-case, numbers / currency / ordinals spelled with num2words (zh: cn_tn),
abbreviations and symbols expanded, whitespace collapsed), then zh becomes tone-numbered pinyin and
ko academic romanisation; ja becomes cutlet romaji; hi is only lower-cased. The word tables below
are the reference's data. Every step that the reference wraps in a bare `try/except: pass` keeps
that behaviour: a failing step leaves the text as it was before that step.
"""

from __future__ import annotations

import re
from functools import cache

import pypinyin
from hangul_romanize import Transliter
from hangul_romanize.rule import academic
from num2words import num2words

from .zh_numbers import normalize_zh_numbers

MULTILINGUAL = frozenset("ar cs de en es fr hu it nl pl pt ru tr zh ko".split())
CLEANED_LANGUAGES = MULTILINGUAL | {"ja", "hi"}


def _abbrev(pairs: str, word_end: str = r"\.") -> list[tuple[re.Pattern, str]]:
    """'abbr=expansion;...' -> [(regex, expansion)], in the reference's order (mrs before mr)."""
    out = []
    for pair in filter(None, pairs.split(";")):
        short, long = pair.split("=")
        out.append((re.compile(rf"\b{short}{word_end}", re.IGNORECASE), long))
    return out


_ABBREVIATIONS = {
    "en": _abbrev(
        "mrs=misess;mr=mister;dr=doctor;st=saint;co=company;jr=junior;maj=major;gen=general;drs=doctors;"
        "rev=reverend;lt=lieutenant;hon=honorable;sgt=sergeant;capt=captain;esq=esquire;ltd=limited;"
        "col=colonel;ft=fort"
    ),
    "es": _abbrev("sra=señora;sr=señor;dr=doctor;dra=doctora;st=santo;co=compañía;jr=junior;ltd=limitada"),
    "fr": _abbrev("mme=madame;mr=monsieur;dr=docteur;st=saint;co=compagnie;jr=junior;ltd=limitée"),
    "de": _abbrev("fr=frau;dr=doktor;st=sankt;co=firma;jr=junior"),
    "pt": _abbrev("sra=senhora;sr=senhor;dr=doutor;dra=doutora;st=santo;co=companhia;jr=júnior;ltd=limitada"),
    "it": _abbrev("sig=signore;dr=dottore;st=santo;co=compagnia;jr=junior;ltd=limitata"),
    "pl": _abbrev("p=pani;m=pan;dr=doktor;sw=święty;jr=junior"),
    "ar": [],
    "zh": [],
    "cs": _abbrev("dr=doktor;ing=inženýr;p=pan"),
    "ru": _abbrev("г-жа=госпожа;г-н=господин;д-р=доктор", word_end=r"\b"),  # no trailing dot in Russian
    "nl": _abbrev("dhr=de heer;mevr=mevrouw;dr=dokter;jhr=jonkheer"),
    "tr": _abbrev("b=bay;byk=büyük;dr=doktor"),
    "hu": _abbrev("dr=doktor;b=bácsi;nőv=nővér"),
    "ko": [],
}

# Words for & @ % # $ £ ° (in this order, which is the order they are replaced in).
_SYMBOL_CHARS = "&@%#$£°"
_SYMBOL_WORDS = {
    "en": "and|at|percent|hash|dollar|pound|degree",
    "es": "y|arroba|por ciento|numeral|dolar|libra|grados",
    "fr": "et|arobase|pour cent|dièse|dollar|livre|degrés",
    "de": "und|at|prozent|raute|dollar|pfund|grad",
    "pt": "e|arroba|por cento|cardinal|dólar|libra|graus",
    "it": "e|chiocciola|per cento|cancelletto|dollaro|sterlina|gradi",
    "pl": "i|małpa|procent|krzyżyk|dolar|funt|stopnie",
    "ar": "و|على|في المئة|رقم|دولار|جنيه|درجة",
    "zh": "和|在|百分之|号|美元|英镑|度",
    "cs": "a|na|procento|křížek|dolar|libra|stupně",
    "ru": "и|собака|процентов|номер|доллар|фунт|градус",
    "nl": "en|bij|procent|hekje|dollar|pond|graden",
    "tr": "ve|at|yüzde|diyez|dolar|sterlin|derece",
    "hu": "és|kukac|százalék|kettőskereszt|dollár|font|fok",
    "ko": "그리고|에|퍼센트|번호|달러|파운드|도",
}

_ORDINAL = {
    "en": r"([0-9]+)(st|nd|rd|th)",
    "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
    "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
    "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
    "pt": r"([0-9]+)(º|ª|o|a|os|as)",
    "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
    "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
    "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
    "cs": r"([0-9]+)\.(?=\s|$)",  # Czech marks ordinals with a trailing dot
    "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
    "nl": r"([0-9]+)(de|ste|e)",
    "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
    "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
    "ko": r"([0-9]+)(번째|번|차|째)",
}
_ORDINAL_RE = {lang: re.compile(p) for lang, p in _ORDINAL.items()}
_NUMBER_RE = re.compile(r"[0-9]+")
# Currency amounts, replaced in this order (GBP, USD, EUR): the sign before or after the number.
_CURRENCIES = [(code, re.compile(rf"{sign}[0-9.,]*[0-9]+|[0-9.,]*[0-9]+{sign}")) for code, sign in
               (("GBP", "£"), ("USD", r"\$"), ("EUR", "€"))]
_COMMA_GROUPED_RE = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")  # 1,000.5 (en, ru)
_DOT_GROUPED_RE = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # 1.000,5; the unescaped "." is the reference's
_DECIMAL_RE = re.compile(r"([0-9]+[.,][0-9]+)")
# What num2words puts before the cents; cut off for whole amounts ("twenty euro, zero cents").
_CENTS_JOINER = {"en": ", ", "es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e "}
_WHITESPACE_RE = re.compile(r"\s+")


def _n2w_lang(lang: str) -> str:
    return "cz" if lang == "cs" else lang  # num2words calls Czech "cz"


def _amount(written: str) -> float:
    """'£1,50' -> 1.5: a comma counts as a decimal point, anything but digits and points is ignored.

    Raises ValueError for two separators ("1,000.50" -> "1.000.50"), like the reference.
    """
    return float("".join(c for c in written.replace(",", ".") if c == "." or c.isdecimal()))


def _say_currency(written: str, lang: str, code: str) -> str:
    """Amount in words with its currency; a whole amount drops num2words' "..., zero cents" tail."""
    amount = _amount(written)
    words = num2words(amount, to="currency", currency=code, lang=_n2w_lang(lang))
    if amount.is_integer():
        whole, joiner, _cents = words.rpartition(_CENTS_JOINER.get(lang, ", "))
        if joiner:
            return whole
    return words


def expand_currency(text: str, lang: str) -> str:
    """£/$/€ amounts to words, one currency after the other.

    A failure (an unreadable amount, a currency num2words lacks for `lang`) stops there: currencies
    already done stay done, the failing one and those after it stay as written (the reference).
    """
    for code, pattern in _CURRENCIES:
        try:
            text = pattern.sub(lambda m, code=code: _say_currency(m[0], lang, code), text)
        except Exception:  # noqa: BLE001 - the reference ignores any failure here
            break
    return text


def expand_numbers(text: str, lang: str) -> str:
    """Reference `expand_numbers_multilingual`. May raise (the caller keeps the input then)."""
    if lang == "zh":
        return normalize_zh_numbers(text)
    if lang in ("en", "ru"):
        text = _COMMA_GROUPED_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    else:
        text = _DOT_GROUPED_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    text = expand_currency(text, lang)
    if lang != "tr":
        text = _DECIMAL_RE.sub(lambda m: num2words(float(m.group(1).replace(",", ".")), lang=_n2w_lang(lang)), text)
    text = _ORDINAL_RE[lang].sub(lambda m: num2words(int(m.group(1)), ordinal=True, lang=_n2w_lang(lang)), text)
    return _NUMBER_RE.sub(lambda m: num2words(int(m.group(0)), lang=_n2w_lang(lang)), text)


def expand_abbreviations(text: str, lang: str) -> str:
    for regex, word in _ABBREVIATIONS[lang]:
        text = regex.sub(word, text)
    return text


def expand_symbols(text: str, lang: str) -> str:
    for char, word in zip(_SYMBOL_CHARS, _SYMBOL_WORDS[lang].split("|")):
        text = text.replace(char, f" {word} ").replace("  ", " ")
    return text.strip()


def multilingual_cleaners(text: str, lang: str) -> str:
    """Reference `multilingual_cleaners`: each expansion step is skipped if it raises."""
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for step in (expand_numbers, expand_abbreviations, expand_symbols):
        try:
            text = step(text, lang)
        except Exception:  # noqa: BLE001 - the reference swallows every error here
            pass
    return _WHITESPACE_RE.sub(" ", text)


def chinese_to_pinyin(text: str) -> str:
    """Tone-numbered pinyin, syllables joined without spaces (neutral tone = 5)."""
    syllables = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True)
    return "".join(s[0] for s in syllables)


@cache
def _korean() -> Transliter:
    return Transliter(academic)


@cache
def _cutlet():
    import cutlet  # slow to import (MeCab dictionary): only when Japanese lyrics appear

    return cutlet.Cutlet()


def clean_text(text: str, lang: str) -> str:
    """Reference `VoiceBpeTokenizer.preprocess_text` for a supported language code.

    Raises:
        NotImplementedError: `lang` is not one of `CLEANED_LANGUAGES` (the reference's message).
    """
    if lang in MULTILINGUAL:
        text = multilingual_cleaners(text, lang)
        if lang == "zh":
            text = chinese_to_pinyin(text)
        elif lang == "ko":
            text = _korean().translit(text)
        return text
    if lang == "ja":
        return _cutlet().romaji(text).lower()
    if lang == "hi":
        return _WHITESPACE_RE.sub(" ", text.lower())
    raise NotImplementedError(f"Language '{lang}' is not supported.")
