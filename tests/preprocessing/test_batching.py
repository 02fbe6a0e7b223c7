"""Cross-song batching (text encoder, SSL), the decode look-ahead and --compile give per-song results."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from acetune.preprocessing import batching, ssl
from acetune.preprocessing.reader import prefetch

# Batched and per-song passes differ only by the float rounding of other matrix shapes (not bit for
# bit: that is why --batch_songs is off by default; measured max |diff| ~1e-7 at these sizes).
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from acetune.models.v1.text_encoder import TextEncoder, save_tiny_umt5

    return TextEncoder.from_pretrained(save_tiny_umt5(tmp_path_factory.mktemp("umt5"), num_layers=2, d_model=32))


@pytest.fixture(scope="module")
def tiny_ssl():
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          feat_extract_norm="group", do_stable_layer_norm=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return HubertModel(config).eval()


def test_length_buckets_sort_and_pack():
    batches = batching.length_buckets([30, 5, 12, 6, 40], sizes=[2, 2, 2, 2, 5], batch_size=4)
    assert batches == [[1, 3], [2, 0], [4]]  # by length; an item larger than the batch gets its own
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_batched_text_equals_song_by_song(tiny_text):
    songs = [["rock, pop"], ["a much longer prompt with many words, female vocals, 120 bpm, guitar, drums", "jazz"],
             ["x" * 300, "piano", "ambient, slow, soft pads"], ["metal", "metal, loud", "loud metal", "drums, fast"],
             ["café, 東京, ünïcode"]]
    alone = batching.encode_texts(tiny_text, songs, batch_size=1)
    batched = batching.encode_texts(tiny_text, songs, batch_size=6)
    for prompts, (h1, m1), (h2, m2) in zip(songs, alone, batched):
        ref_h, ref_m = tiny_text.encode(prompts, path="dataset")
        assert torch.equal(h1, ref_h) and torch.equal(m1, ref_m)
        assert h2.shape == h1.shape and torch.equal(m2, m1)  # same stored shapes, padding positions included
        torch.testing.assert_close(h2, h1, rtol=0, atol=ATOL)
    # the buckets really batched: fewer forward passes than songs
    calls = []
    original = tiny_text.encode
    tiny_text.encode = lambda texts, path: calls.append(len(texts)) or original(texts, path=path)
    try:
        batching.encode_texts(tiny_text, songs, batch_size=6)
    finally:
        tiny_text.encode = original
    assert len(calls) < len(songs) and sum(calls) == sum(map(len, songs))


def test_pooled_ssl_equals_per_sample(tiny_ssl):
    source = ssl.SSLSource("test", 16000, 1)  # 1 s chunks: several chunks per input, a short last one
    gen = torch.Generator().manual_seed(1)
    inputs = []
    for seconds in (2.5, 0.3, 4.0, 1.0):
        n = int(16000 * seconds)
        signal = torch.randn(n + 1000, generator=gen)  # samples past `valid` must not be used
        inputs.append((signal, n))
    pooled = batching.ssl_features_pooled(tiny_ssl, inputs, source, batch_size=3)
    for (signal, valid), feats in zip(inputs, pooled):
        ref = ssl.ssl_features(tiny_ssl, signal, valid, source, batch_size=8)
        assert feats.shape == ref.shape and feats.shape[0] >= 15 * -(-valid // 16000)  # every chunk's frames
        torch.testing.assert_close(feats, ref, rtol=0, atol=ATOL)


def test_prefetch_keeps_order_bounds_lookahead_and_isolates_errors():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.01)
        if i == 3:
            raise ValueError("bad file 3")
        return i * 10

    seen = []
    for item, handle in prefetch(list(range(8)), work, workers=2):
        with lock:
            assert max(started) <= item + 3  # at most workers + 1 songs ahead
        try:
            seen.append(handle.result())
        except ValueError as err:
            seen.append(str(err))
    assert seen == [0, 10, 20, "bad file 3", 40, 50, 60, 70]
    inline = [(i, h.result() if i != 3 else None) for i, h in prefetch(list(range(3)), work, workers=0)]
    assert inline == [(0, 0), (1, 10), (2, 20)]


def test_compile_encoders_wraps_each_heavy_module_in_place(tiny_text, tiny_ssl):
    from types import SimpleNamespace

    dcae = SimpleNamespace(encoder=torch.nn.Conv1d(2, 4, 3))
    enc = SimpleNamespace(codec=SimpleNamespace(dcae=dcae), text=tiny_text, ssl_models={"mert": tiny_ssl})
    x = torch.randn(1, 2, 50)
    before = dcae.encoder(x)
    text_before = tiny_text.encode(["rock"], path="dataset")[0]
    names = batching.compile_encoders(enc, backend="eager")
    try:
        assert names == ["dcae.encoder", "text", "ssl.mert"]
        assert enc.ssl_models["mert"] is tiny_ssl and dcae.encoder._compiled_call_impl is not None
        torch.testing.assert_close(dcae.encoder(x), before)
        torch.testing.assert_close(tiny_text.encode(["rock"], path="dataset")[0], text_before)
    finally:
        for module in (dcae.encoder, tiny_text.model, tiny_ssl):
            module._compiled_call_impl = None
    assert batching.compile_encoders(SimpleNamespace()) == []
