"""Chinese number verbalisation, as the reference lyric tokenizer applies it before pinyin.

Mirrors `TextNorm()(text)` with default options from the reference's `zh_num2words.py` (itself
the SpeechIO/WeNet `cn_tn` normaliser): dates, money, phone numbers, fractions, percentages,
numbers before a measure word, long digit strings and plain numbers are spelled out in simplified
Chinese ("mid" numbering: 万 = 10^4, 亿 = 10^8, 兆 = 10^12, ...), then every Chinese or ASCII
punctuation mark becomes ",". Reference quirks kept on purpose, because token ids depend on them:
each rewrite replaces the *first* occurrence of the matched string anywhere in the text, and a
number with two decimal points raises `ValueError` (the caller then drops the whole rewrite).
"""

from __future__ import annotations

import re
import string

_DIGITS = "零一二三四五六七八九"
_LIANG = "两"  # "2" before 百/千/万/... at the start of a number (num2chn alt_two)
_POINT = "点"
# (power of ten, character): small units then the "mid" system's large units.
_UNITS = [(1, "十"), (2, "百"), (3, "千"), (4, "万")] + [(4 * (i + 2), c) for i, c in enumerate("亿兆京垓秭穰沟涧正载")]

# Measure words after which a number is read as a quantity (cn_tn COM_QUANTIFIERS, as a set).
_QUANTIFIERS = (
    "丈 世 丘 丝 两 个 丸 代 令 件 伏 位 冬 出 刀 分 分米 刻 勺 匹 千克 千米 升 单 卮 厘 厘米 双 叠 口 只 合 名 周 啖 回 场 块 "
    "坡 堂 堆 墙 壳 壶 夏 夜 天 头 季 客 家 寸 对 寻 尺 尾 层 山 岁 岭 常 幢 年 座 张 微克 微米 忽 户 手 扎 打 担 挑 捆 撮 支 "
    "斗 斛 斤 日 旬 时 春 曲 更 月 本 条 杯 板 枝 根 桶 棵 毫 毫克 毫米 江 泡 溪 炮 煲 片 瓶 盆 盏 盒 盘 石 砣 碗 碟 秋 秒 程 "
    "窠 笼 管 箩 箱 篮 簋 粒 纪 线 罐 网 罗 群 脚 腔 袋 袭 课 贯 贴 跳 身 辆 辈 道 里 针 钟 钧 钱 钵 铢 铺 锅 锱 阙 队 阵 面 "
    "页 顶 颗 首"
).split()
_QUANTIFIER_ALT = "|".join(sorted(_QUANTIFIERS, key=len, reverse=True))
# Money units; the alternation order matters (the first alternative that fits wins).
_MONEY_UNITS = "(?:(?:亿|千万|百万|万|千|百)|(?:亿|千万|百万|万|千|百|)元|(?:亿|千万|百万|万|千|百|)块|角|毛|分)"

_RE_DATE = re.compile(r"\D+((?:(?:[089]\d|(?:19|20)\d{2})年)?(?:\d{1,2}月(?:\d{1,2}[日号])?)?)")
_RE_MONEY = re.compile(r"\D+(\d+(?:\.\d+)?[多余几]?" + _MONEY_UNITS + r"(?:\d" + _MONEY_UNITS + r"?)?)")
_RE_MOBILE = re.compile(r"\D((?:\+?86 ?)?1(?:[38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_RE_LANDLINE = re.compile(r"\D((?:0(?:10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_RE_FRACTION = re.compile(r"\d+/\d+")
_RE_PERCENT = re.compile(r"\d+(?:\.\d+)?%")
_RE_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)[多余几]?(?:" + _QUANTIFIER_ALT + ")")
_RE_DIGIT_STRING = re.compile(r"\d{4,32}")
_RE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_RE_LETTER_TWO_LETTER = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")  # P2P, B2B: undo "2" -> "二"

# Chinese punctuation (Zhon's lists, as cn_tn uses them) plus ASCII punctuation, all -> ",".
_CN_PUNCS = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏·〈〉-"
)
_PUNCT_TO_COMMA = str.maketrans({c: "," for c in _CN_PUNCS + string.punctuation})


def _spell_units(digits: str) -> list[str]:
    """Chinese symbols for an integer string with units (cn_tn `num2chn.get_value`)."""
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        # A single digit after dropped zeros keeps one 零 ("05" -> 零五).
        return ([_DIGITS[0]] if len(digits) != len(stripped) else []) + [_DIGITS[int(stripped)]]
    power, unit = next(u for u in reversed(_UNITS) if u[0] < len(stripped))
    # The head is cut from the unstripped string, as the reference does.
    return _spell_units(digits[:-power]) + [unit] + _spell_units(stripped[-power:])


def num2chn(number: str, alt_two: bool = True, use_units: bool = True) -> str:
    """Spell "123.45" in Chinese (mirrors cn_tn `num2chn` with simplified, non-financial digits)."""
    parts = number.split(".")
    if len(parts) > 2:
        raise ValueError(f"number with more than one decimal point: {number}")
    int_part, dec_part = parts[0], parts[1] if len(parts) == 2 else ""
    if use_units and len(int_part) > 1:
        symbols = _spell_units(int_part)
    else:
        symbols = [_DIGITS[int(c)] for c in int_part]
    if dec_part:
        symbols += [_POINT] + [_DIGITS[int(c)] for c in dec_part]
    if alt_two:
        powers = {c: p for p, c in _UNITS}
        for i, sym in enumerate(symbols):
            if sym != _DIGITS[2]:
                continue
            nxt = symbols[i + 1] if i + 1 < len(symbols) else None
            prev = symbols[i - 1] if i > 0 else None
            # 两 only directly before a unit above 十, and not right after 十.
            if nxt in powers and (prev is None or prev in powers):
                if powers[nxt] != 1 and (prev is None or powers[prev] != 1):
                    symbols[i] = _LIANG
    out = "".join(symbols)
    if out.startswith(_POINT):
        return _DIGITS[0] + out
    if len(out) >= 2 and out[0] == _DIGITS[1] and out[1] == "十":  # 一十二 -> 十二
        out = out[1:]
    return out


def _digits(number: str) -> str:
    """Digit by digit ("2024" -> 二零二四), cn_tn `Digit`."""
    return num2chn(number, alt_two=False, use_units=False)


def _date(date: str) -> str:
    """cn_tn `Date.date2chntext`: year digit by digit, month and day as numbers."""
    pieces = date.strip().split("年", 1)
    if len(pieces) == 2:
        year, rest = _digits(pieces[0]) + "年", pieces[1]
    else:
        year, rest = "", date
    if not rest:
        return year
    pieces = rest.strip().split("月", 1)
    if len(pieces) == 2:
        month, day = num2chn(pieces[0]) + "月", pieces[1]
    else:
        month, day = "", date  # the reference falls back to the whole date here
    if day:
        day = num2chn(day[:-1]) + day[-1]
    return year + month + day


def _money(money: str) -> str:
    for number in _RE_NUMBER.findall(money):
        money = money.replace(number, num2chn(number))
    return money


def _phone(phone: str, landline: bool) -> str:
    parts = phone.split("-") if landline else phone.strip("+").split()
    return "".join(_digits(p) for p in parts)


def _rewrite_first(text: str, matches: list[str], spell) -> str:
    """Replace, for each match in order, the first occurrence of its text (reference behaviour)."""
    for m in matches:
        text = text.replace(m, spell(m), 1)
    return text


def normalize_zh_numbers(text: str) -> str:
    """Spell out numbers and turn punctuation into "," (cn_tn `TextNorm()` with defaults).

    Raises:
        ValueError: a number has two decimal points (the reference then keeps the text as it was).
    """
    text = "^" + text + "$"  # sentinels so the \\D-anchored patterns can match at the ends
    text = _rewrite_first(text, _RE_DATE.findall(text), _date)
    text = _rewrite_first(text, _RE_MONEY.findall(text), _money)
    text = _rewrite_first(text, _RE_MOBILE.findall(text), lambda m: _phone(m, landline=False))
    text = _rewrite_first(text, _RE_LANDLINE.findall(text), lambda m: _phone(m, landline=True))

    def fraction(m: str) -> str:
        numerator, denominator = m.split("/")
        return num2chn(denominator) + "分之" + num2chn(numerator)

    text = _rewrite_first(text, _RE_FRACTION.findall(text), fraction)
    text = text.replace("％", "%")
    text = _rewrite_first(text, _RE_PERCENT.findall(text), lambda m: "百分之" + num2chn(m.strip().strip("%")))
    text = _rewrite_first(text, _RE_QUANTITY.findall(text), num2chn)
    text = _rewrite_first(text, _RE_DIGIT_STRING.findall(text), _digits)
    text = _rewrite_first(text, _RE_NUMBER.findall(text), num2chn)
    for whole, left, right in _RE_LETTER_TWO_LETTER.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    text = text.lstrip("^").rstrip("$")
    return text.translate(_PUNCT_TO_COMMA)
