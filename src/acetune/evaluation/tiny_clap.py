"""A tiny random CLAP (transformers ClapModel) in the Hub folder layout, built offline: the demo and the
tests use it; real runs load laion/clap-htsat-unfused.

`save_tiny_clap(folder)` writes config.json + model.safetensors (save_pretrained), the feature
extractor's preprocessor_config.json and a byte-level BPE Roberta tokenizer trained here on a few
words, so `ClapModel.from_pretrained(folder)` / `ClapProcessor.from_pretrained(folder)` load it as
they load laion/clap-htsat-unfused.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = ["dark synthwave with female vocals", "lofi chill beat with mellow keys", "acoustic folk guitar song",
          "heavy metal drums and distorted guitar", "jazz trio piano bass drums", "ambient pad drone"]
SAMPLE_RATE = 16000  # not 48 kHz: the tests prove the resampling to CLAP's rate


def save_tiny_clap(folder: Path, seed: int = 0, max_length_s: int = 2) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizerFast,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok_dir = folder / "_bpe"
    tok_dir.mkdir(exist_ok=True)
    vocab, merges = bpe.save_model(str(tok_dir))
    tokenizer = RobertaTokenizerFast(vocab_file=vocab, merges_file=merges, model_max_length=64)
    text = ClapTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=72, projection_dim=16, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2)
    audio = ClapAudioConfig(num_mel_bins=16, spec_size=64, window_size=4, patch_size=4, patch_stride=(4, 4),
                            hidden_size=32, patch_embeds_hidden_size=16, depths=(1, 1), num_attention_heads=(1, 2),
                            projection_dim=16, num_classes=4)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ClapModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=SAMPLE_RATE, hop_length=160,
                                     max_length_s=max_length_s, fft_window_size=400, frequency_max=8000,
                                     truncation="rand_trunc", padding="repeatpad")  # as the unfused release
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return folder
