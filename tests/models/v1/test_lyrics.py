"""Lyric tokenizer: exact ids on every golden sample (both reference paths), edge cases, vocab lookup."""

from __future__ import annotations

import json
import socket
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from acetune.errors import CheckpointError, InputError
from acetune.layout import LYRIC_VOCAB_FILE
from acetune.models.v1.lyrics import (
    LINE_BREAK_ID,
    NO_LYRICS_ID,
    START_ID,
    SUPPORT_LANGUAGES,
    UNK_ID,
    LyricTokenizer,
    UnsupportedLyricsLanguage,
    find_lyric_vocab,
)
from acetune.models.v1.lyrics.vocab import sha256_of
from acetune.parity.lyrics import lyrics_case
from golden_checks import assert_rows_pass


@pytest.fixture(scope="module")
def vocab(golden):
    return golden / "lyrics" / "vocab.json"


@pytest.fixture(scope="module")
def tok(vocab):
    return LyricTokenizer.from_vocab(vocab)


@pytest.fixture(scope="module")
def samples(golden):
    return json.loads((golden / "lyrics" / "lyrics_golden.json").read_text(encoding="utf-8"))["samples"]


# ---- parity ----

def test_golden_case_all_rows_pass(golden, samples):
    rows = assert_rows_pass(lyrics_case(golden))
    assert len(samples) == 80
    summary = {r.tensor.split(":")[0]: r.value for r in rows[:5]}
    # 80/80 exact on both paths, every language decision and every tokenizer call.
    assert summary == {"dataset ids": 0, "pipeline ids": 0, "dataset segments+counts": 0,
                       "pipeline line languages": 0, "encode calls": 0}
    print(f"lyrics parity: dataset {80 - summary['dataset ids']:.0f}/80, pipeline {80 - summary['pipeline ids']:.0f}/80")


def test_paths_differ_where_the_reference_differs(tok, samples):
    same = sum(
        "token_ids" in s["dataset"] and tok.tokenize_dataset(s["text"]) == tok.tokenize_pipeline(s["text"])
        for s in samples
    )
    assert same == 11  # README: the two reference paths agree on only 11 of the 80 samples


# ---- bad input ----

def test_unsupported_language_dataset_error(tok, samples):
    text = next(s["text"] for s in samples if s["id"] == "edge_unsupported_vi")
    with pytest.raises(UnsupportedLyricsLanguage, match="Unsupported language: vi") as info:
        tok.tokenize_dataset(text)
    assert isinstance(info.value, ValueError)
    res = tok.tokenize_dataset_checked(text, song="hanoi.mp3")
    assert res.ids is None and res.language == "vi"
    assert len(res.warnings) == 1 and res.warnings[0].startswith("hanoi.mp3: ") and "'vi'" in res.warnings[0]
    # The inference path never raises: unsupported lines are encoded as English.
    ids = tok.tokenize_pipeline(text)
    assert ids[0] == START_ID and ids[-1] == LINE_BREAK_ID


@pytest.mark.parametrize("text", ["", "   ", "\n\n", " \t\n "])
def test_empty_lyrics(tok, text):
    assert tok.tokenize_dataset(text) == [NO_LYRICS_ID]
    res = tok.tokenize_dataset_checked(text, song="song.wav")
    assert res.ids == [NO_LYRICS_ID] and res.warnings and res.warnings[0].startswith("song.wav: no lyrics")


def test_empty_lyrics_pipeline(tok):
    assert tok.tokenize_pipeline("") == [NO_LYRICS_ID]  # `__call__` skips tokenisation for ""
    assert tok.tokenize_pipeline("\n") == [START_ID, LINE_BREAK_ID, LINE_BREAK_ID]  # blank lines -> [2]
    assert tok.tokenize_pipeline_checked("", song="x.flac").warnings[0].startswith("x.flac: no lyrics")


def test_caption_prompt_as_lyrics_is_dropped(tok):
    assert tok.tokenize_dataset("write a sad pop song that genre is ballad") == [NO_LYRICS_ID]


def test_unknown_token_falls_back_to_segment_language(tok):
    # Main language English; the Korean line is first encoded as en ([UNK]) then as ko.
    text = "Baby I love you so much tonight\nOh my love forever and ever\n사랑해"
    assert UNK_ID in tok.encode("사랑해", "en")
    korean = tok.encode("사랑해", "ko")
    assert UNK_ID not in korean
    ids = tok.tokenize_dataset(text)
    assert ids[-len(korean) - 1:] == korean + [LINE_BREAK_ID]
    assert UNK_ID not in ids


def test_unmappable_text_warns(tok):
    res = tok.tokenize_dataset_checked("[Verse 1]\nhello there my friend", song="a.wav")
    assert res.ids is not None and UNK_ID in res.ids  # "[" and "]" of a non-tag bracket -> [UNK]
    assert any(w.startswith("a.wav: ") and "[UNK]" in w for w in res.warnings)


# ---- structure, specials ----

@pytest.mark.parametrize("tag,tag_id", [
    ("[start]", 6681), ("[Intro]", 6682), ("[verse]", 6683), ("[CHORUS]", 6684), ("[bridge]", 6685),
    ("[outro]", 6686), ("[end]", 6687), ("[inst]", 6688), ("[solo]", 6689), ("[hook]", 6690),
    ("[pre-chorus]", 6691), ("[break]", 6692),
])
def test_structure_tags(tok, tag, tag_id):
    expected = [START_ID, SUPPORT_LANGUAGES["en"], tag_id, LINE_BREAK_ID]
    assert tok.tokenize_pipeline(tag) == expected
    assert tok.tokenize_pipeline(f"  {tag}  ") == expected  # pipeline strips lines


def test_language_tokens_and_decode(tok):
    assert tok.encode("hola", "es")[0] == SUPPORT_LANGUAGES["es"]
    assert tok.encode("你好", "zh")[0] == SUPPORT_LANGUAGES["zh"]  # "[zh-cn]"
    assert tok.encode("hello", "en-US")[0] == SUPPORT_LANGUAGES["en"]  # region dropped
    assert tok.decode(tok.encode("hello world", "en")) == "[en]hello world"
    with pytest.raises(NotImplementedError):
        tok.encode("xin chào", "vi")


# ---- vocab lookup ----

def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/vocab.json"  # nothing listens there any more


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    handler = partial(Quiet, directory=str(root))
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_vocab_explicit_checkpoint_cache_order(tmp_path, vocab):
    assert find_lyric_vocab(vocab) == vocab
    with pytest.raises(InputError, match="not found"):
        find_lyric_vocab(tmp_path / "nope.json")
    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    ckpt.mkdir()
    (cache / "lyrics").mkdir(parents=True)
    (cache / "lyrics" / LYRIC_VOCAB_FILE).write_bytes(vocab.read_bytes())
    url = _closed_port_url()
    assert find_lyric_vocab(checkpoint_dir=ckpt, cache_dir=cache, url=url) == cache / "lyrics" / LYRIC_VOCAB_FILE
    (ckpt / LYRIC_VOCAB_FILE).write_bytes(vocab.read_bytes())
    assert find_lyric_vocab(checkpoint_dir=ckpt, cache_dir=cache, url=url) == ckpt / LYRIC_VOCAB_FILE


def test_vocab_offline_message(tmp_path):
    with pytest.raises(CheckpointError) as info:
        find_lyric_vocab(checkpoint_dir=tmp_path, cache_dir=tmp_path / "cache", url=_closed_port_url())
    msg = str(info.value)
    assert "\n" not in msg and "offline" in msg and "--lyric_vocab" in msg
    assert not list((tmp_path / "cache" / "lyrics").iterdir())  # no partial file left


def test_vocab_download_verified_once(tmp_path, vocab, http_dir):
    root, base = http_dir
    (root / "vocab.json").write_bytes(vocab.read_bytes())
    cache = tmp_path / "cache"
    got = find_lyric_vocab(cache_dir=cache, url=f"{base}/vocab.json", sha256=sha256_of(vocab))
    assert got == cache / "lyrics" / LYRIC_VOCAB_FILE and sha256_of(got) == sha256_of(vocab)
    # Second lookup is served from the cache: the URL is not contacted again.
    assert find_lyric_vocab(cache_dir=cache, url=_closed_port_url()) == got


def test_vocab_sha_mismatch(tmp_path, http_dir):
    root, base = http_dir
    (root / "vocab.json").write_text('{"not": "the vocab"}')
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="sha256"):
        find_lyric_vocab(cache_dir=cache, url=f"{base}/vocab.json")
    assert not (cache / "lyrics" / LYRIC_VOCAB_FILE).exists()
    assert not list((cache / "lyrics").iterdir())
