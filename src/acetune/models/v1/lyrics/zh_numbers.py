"""Chinese number verbalisation, as the reference lyric tokenizer applies it before pinyin.

The reference spells numbers out in Chinese before it converts zh lyrics to pinyin (its Chinese
text normaliser with default options), so the lyric token ids depend on every decision below. The
rules were read off the reference's behaviour and are the spec this module implements; each row
has a test in `tests/models/v1/test_zh_numbers.py`.

Spelling a number (a "cardinal"; "mid" scale: 万 = 10^4, 亿 = 10^8, 兆 = 10^12, then ×10^4 each
for 京 垓 秭 穰 沟 涧 正 载):

| # | rule | examples |
| --- | --- | --- |
| C1 | one digit, or a whole part of one character, reads digit by digit (0 -> 零) | 0 零, 7 七 |
| C2 | otherwise split at the largest unit 10^P ≤ n: head + unit + tail; a zero tail vanishes | 300 三百, 20000 两万 |
| C3 | 零 once where the tail skips its top place (tail < 10^(P−1)) | 1005 一千零五, 100500 十万零五百 |
| C4 | leading zeros: one 零 in front; all zeros with two or more characters: nothing | 05 零五, 00 (empty) |
| C5 | 二 reads 两 when directly before 百 or a larger unit and at the start or right after 百 or larger | 2000 两千, 2200 两千两百, 220 两百二十, 22 二十二, 12000 一万两千 |
| C6 | a leading 一十 drops its 一 (only at the very start) | 10 十, 15 十五, 110 一百一十 |
| C7 | decimals: 点 then the decimals digit by digit; a bare 点 at the start gets 零 | 3.14 三点一四, 00.5 零点五 |

Rewriting a text. The text is wrapped as "^" + text + "$" (so the patterns that need a non-digit
on each side also match at the ends); the rules run in this order, each one first collecting its
matches on the text as it stands, then replacing, for each match in turn, the *first occurrence of
the matched string anywhere in the text* (not necessarily the matched place: a reference quirk that
token ids depend on):

| # | rule | pattern (after at least one non-digit unless said) | spelled as |
| --- | --- | --- | --- |
| R1 | dates | [089]d or 19dd/20dd + 年, and/or 1–2 digits + 月 (+ 1–2 digits + 日/号) | year digit by digit; month, day as cardinals |
| R2 | money | number (+ 多/余/几) + money unit (亿/千万/百万/万/千/百, optionally + 元 or 块; 元; 块; 角; 毛; 分), optionally one more digit (+ unit) | every number in it as a cardinal |
| R3 | mobile numbers | (+86 )1 + [38]d/5[0-35-9]/7[678]/9[89] + 8 digits, between non-digits | every digit read out, "+" and spaces dropped |
| R4 | landlines | (0 + area code 10/2[1-3]/3 digits + optional "-") + 7–8 digits not starting with 0, between non-digits | every digit read out, "-" dropped |
| R5 | fractions | digits/digits (anywhere) | denominator 分之 numerator |
| R6 | percentages | number + % (full-width ％ counts as %) | 百分之 + cardinal |
| R7 | quantities | number (+ 多/余/几) + a measure word (个, 首, 年, 天, 米 units, ...) | the number as a cardinal |
| R8 | long digit strings | 4–32 digits (anywhere) | digit by digit |
| R9 | other numbers | digits (.digits) (anywhere) | cardinal |
| R10 | letter-2-letter | letters + 二 + letters (P2P, B2B) | the 二 back to 2 |
| R11 | punctuation | every Chinese or ASCII punctuation mark, after the sentinels are stripped | "," |

"Number" means digits with at most one ".digits"; "digit" is any Unicode decimal digit, as Python's
`\\d`. Stripping the sentinels removes every "^" at the start and every "$" at the end.

Why not a library: cn2an 0.5.24 (the maintained choice; checked in a scratch environment) writes
2000 as 二千 and 220 as 二百二十 (C5 wants 两), 05 as 五 (C4: 零五), and reads 13812345678 as a
cardinal (R3 reads digits); it has no first-occurrence quirk either. Each changes token ids.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

DIGIT_NAMES = "零一二三四五六七八九"
ZERO, ONE, TWO, LIANG, TEN, POINT = "零", "一", "二", "两", "十", "点"
# (P, unit) for 10^P, largest first: the "mid" scale above 万 steps by 10^4.
UNITS = tuple((4 * (i + 2), u) for i, u in enumerate("亿兆京垓秭穰沟涧正载"))[::-1] + ((4, "万"), (3, "千"), (2, "百"), (1, TEN))
_HUNDRED_OR_MORE = "".join(u for p, u in UNITS if p >= 2)
_LIANG_PLACES = re.compile(f"(?:^|(?<=[{_HUNDRED_OR_MORE}])){TWO}(?=[{_HUNDRED_OR_MORE}])")  # C5


# ---- spelling one number (rows C1-C7) ----

def read_digits(digits: str) -> str:
    """Digit by digit: "2024" -> 二零二四 (C1, years, phone numbers, long digit strings)."""
    return "".join(DIGIT_NAMES[int(d)] for d in digits)


def _with_units(significant: str) -> str:
    """C2/C3 for a digit string without leading ASCII zeros (at least one character)."""
    if len(significant) == 1:
        return read_digits(significant)
    power, unit = next((p, u) for p, u in UNITS if p < len(significant))  # largest 10^P <= n
    head, tail = significant[:-power], significant[-power:].lstrip("0")
    if not tail:
        return _with_units(head) + unit
    gap = ZERO if len(tail) < power else ""
    return _with_units(head) + unit + gap + _with_units(tail)


def cardinal(number: str) -> str:
    """Spell "1234.5" in simplified Chinese (rows C1-C7).

    Raises:
        ValueError: more than one decimal point (the rewrite patterns never produce one).
    """
    whole, _, decimals = number.partition(".")
    if "." in decimals:
        raise ValueError(f"number with more than one decimal point: {number}")
    if len(whole) <= 1:
        text = read_digits(whole)
    else:
        significant = whole.lstrip("0")
        text = (ZERO if significant and significant != whole else "") + (_with_units(significant) if significant else "")
        text = _LIANG_PLACES.sub(LIANG, text)
    if "." in number:
        text += POINT + read_digits(decimals)
    if text.startswith(POINT):
        text = ZERO + text
    if text.startswith(ONE + TEN):
        text = text[1:]
    return text


# ---- the rewrite rules (R1-R10), in the order they run ----

_NUMBER = r"\d+(?:\.\d+)?"
_MONEY_UNIT = r"(?:(?:亿|千万|百万|万|千|百)|(?:亿|千万|百万|万|千|百)?[元块]|角|毛|分)"  # order decides the match
# Measure words after which a number is a quantity (R7): the reference's list, as a set.
MEASURE_WORDS = frozenset(
    "丈 世 丘 丝 两 个 丸 代 令 件 伏 位 冬 出 刀 分 分米 刻 勺 匹 千克 千米 升 单 卮 厘 厘米 双 叠 口 只 合 名 周 啖 回 场 块 "
    "坡 堂 堆 墙 壳 壶 夏 夜 天 头 季 客 家 寸 对 寻 尺 尾 层 山 岁 岭 常 幢 年 座 张 微克 微米 忽 户 手 扎 打 担 挑 捆 撮 支 "
    "斗 斛 斤 日 旬 时 春 曲 更 月 本 条 杯 板 枝 根 桶 棵 毫 毫克 毫米 江 泡 溪 炮 煲 片 瓶 盆 盏 盒 盘 石 砣 碗 碟 秋 秒 程 "
    "窠 笼 管 箩 箱 篮 簋 粒 纪 线 罐 网 罗 群 脚 腔 袋 袭 课 贯 贴 跳 身 辆 辈 道 里 针 钟 钧 钱 钵 铢 铺 锅 锱 阙 队 阵 面 "
    "页 顶 颗 首".split()
)


def _spell_date(m: re.Match) -> str:
    year = read_digits(m["year"]) + "年" if m["year"] else ""
    month = cardinal(m["month"]) + "月" if m["month"] else ""
    day = cardinal(m["day"]) + m["day_unit"] if m["day"] else ""
    return year + month + day


@dataclass(frozen=True)
class Rule:
    """One rewrite: every match's group `text` is replaced (first occurrence) by `spell(match)`."""

    name: str
    pattern: re.Pattern
    spell: Callable[[re.Match], str]


RULES = (
    Rule("date", re.compile(r"\D+(?P<text>(?:(?P<year>[089]\d|(?:19|20)\d{2})年)?"
                            r"(?:(?P<month>\d{1,2})月(?:(?P<day>\d{1,2})(?P<day_unit>[日号]))?)?)"), _spell_date),
    Rule("money", re.compile(rf"\D+(?P<text>{_NUMBER}[多余几]?{_MONEY_UNIT}(?:\d{_MONEY_UNIT}?)?)"),
         lambda m: re.sub(_NUMBER, lambda n: cardinal(n[0]), m["text"])),
    Rule("mobile", re.compile(r"\D(?P<text>(?:\+?86 ?)?1(?:[38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D"),
         lambda m: read_digits(re.sub(r"\D", "", m["text"]))),
    Rule("landline", re.compile(r"\D(?P<text>(?:0(?:10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D"),
         lambda m: read_digits(m["text"].replace("-", ""))),
    Rule("fraction", re.compile(r"(?P<text>(?P<top>\d+)/(?P<bottom>\d+))"),
         lambda m: cardinal(m["bottom"]) + "分之" + cardinal(m["top"])),
    Rule("percent", re.compile(rf"(?P<text>(?P<n>{_NUMBER})%)"), lambda m: "百分之" + cardinal(m["n"])),
    Rule("quantity", re.compile(rf"(?P<text>{_NUMBER})[多余几]?(?:{'|'.join(sorted(MEASURE_WORDS, key=len, reverse=True))})"),
         lambda m: cardinal(m["text"])),
    Rule("digit string", re.compile(r"(?P<text>\d{4,32})"), lambda m: read_digits(m["text"])),
    Rule("number", re.compile(rf"(?P<text>{_NUMBER})"), lambda m: cardinal(m["text"])),
    Rule("letter-2-letter", re.compile(rf"(?P<text>(?P<a>[a-zA-Z]+){TWO}(?P<b>[a-zA-Z]+))"),
         lambda m: m["a"] + "2" + m["b"]),
)

# Chinese punctuation (the Zhon lists the reference uses) and ASCII punctuation, all -> "," (R11).
CHINESE_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏·〈〉-"
)
_TO_COMMA = str.maketrans(dict.fromkeys(CHINESE_PUNCTUATION + string.punctuation, ","))


def normalize_zh_numbers(text: str) -> str:
    """Spell out numbers (R1-R10) and turn punctuation into "," (R11)."""
    text = "^" + text.replace("％", "%") + "$"  # sentinels; ％ -> % early is safe: no rule before R6 reads it
    for rule in RULES:
        for match in list(rule.pattern.finditer(text)):
            if match["text"]:
                text = text.replace(match["text"], rule.spell(match), 1)
    return text.lstrip("^").rstrip("$").translate(_TO_COMMA)
