"""Chinese number verbalisation: one test per row of the spec table in `models/v1/lyrics/zh_numbers.py`.

Expected strings are what the reference's Chinese normaliser returns for the same input (checked by
running it in a scratch environment; the 80 golden lyric samples cover the rest end to end).
"""

from __future__ import annotations

import pytest

from acetune.models.v1.lyrics.zh_numbers import RULES, cardinal, normalize_zh_numbers


@pytest.mark.parametrize("row,number,spelled", [
    ("C1", "0", "零"), ("C1", "7", "七"),
    ("C2", "300", "三百"), ("C2", "100000005", "一亿零五"),
    ("C3", "1005", "一千零五"), ("C3", "100500", "十万零五百"), ("C3", "100010000", "一亿零一万"),
    ("C4", "05", "零五"), ("C4", "00", ""),
    ("C5", "2000", "两千"), ("C5", "2200", "两千两百"), ("C5", "220", "两百二十"), ("C5", "22", "二十二"),
    ("C5", "12000", "一万两千"), ("C5", "20000", "两万"),
    ("C6", "10", "十"), ("C6", "15", "十五"), ("C6", "110", "一百一十"),
    ("C7", "3.14", "三点一四"), ("C7", "00.5", "零点五"),
])
def test_cardinal_rows(row, number, spelled):
    assert cardinal(number) == spelled, row


def test_cardinal_rejects_two_decimal_points():
    with pytest.raises(ValueError, match="more than one decimal point"):
        cardinal("1.2.3")


@pytest.mark.parametrize("row,text,out", [
    ("R1", "2024年5月1日", "二零二四年五月一日"), ("R1", "我在05月20号走", "我在零五月二十号走"), ("R1", "生于1999年", "生于一九九九年"),
    ("R2", "他有3.5万元", "他有三点五万元"), ("R2", "花了5块", "花了五块"), ("R2", "3千元5角", "三千元五角"),
    ("R2", "1.5千克", "一点五千克"),  # 千 is a money unit, and money runs before quantities
    ("R3", "打13812345678", "打一三八一二三四五六七八"), ("R3", "打+86 13812345678", "打八六一三八一二三四五六七八"),
    ("R4", "电话010-12345678好", "电话零一零一二三四五六七八好"), ("R4", "电话0755-1234567好", "电话零七五五一二三四五六七好"),
    ("R5", "吃了3/4个", "吃了四分之三个"),
    ("R6", "涨了50%", "涨了百分之五十"), ("R6", "涨了12.5％", "涨了百分之十二点五"),
    ("R7", "买了2个苹果", "买了二个苹果"), ("R7", "我22岁", "我二十二岁"),
    ("R8", "编号123456", "编号一二三四五六"), ("R8", "2000人", "二零零零人"),
    ("R9", "我22", "我二十二"), ("R9", "第2首", "第二首"),
    ("R10", "P2P和B2B", "P2P和B2B"),
    ("R11", "唱吧!你好。", "唱吧,你好,"),
])
def test_rewrite_rows(row, text, out):
    assert normalize_zh_numbers(text) == out, row


def test_rules_run_in_the_spec_order():
    assert [r.name for r in RULES] == ["date", "money", "mobile", "landline", "fraction", "percent", "quantity",
                                       "digit string", "number", "letter-2-letter"]


def test_first_occurrence_quirk():
    """The quantity rule replaces the first "2024" in the text, so the later one is read digit by digit."""
    assert normalize_zh_numbers("编号2024和2024个") == "编号两千零二十四和二零二四个"
    assert normalize_zh_numbers("5和5个") == "五和五个"


def test_sentinels_take_every_caret_and_dollar_at_the_ends():
    assert normalize_zh_numbers("^^开始$$") == "开始"
    assert normalize_zh_numbers("a^b$c") == "a,b,c"
