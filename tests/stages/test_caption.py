"""`acetune caption` end to end: a tiny random Qwen2.5-Omni in the official folder layout through
the real load + generate path, a local OpenAI-style chat server that checks each request, sidecar
names per convention, skip/overwrite, bad input reported one line each, and the tag/lyric rules."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acetune.captioning.prompts import LYRICS_PROMPT, SYSTEM_PROMPT, TAGS_PROMPT
from acetune.captioning.tags import clean_lyrics, clean_tags, merge_captions, parse_response
from acetune.cli import run_command
from acetune.dataset.sidecars import INSTRUMENTAL, sidecar_name

SR = 44100


def _song(path: Path, seconds: float, bpm: float = 120.0, freq: float = 220.0) -> Path:
    """Clicks on each beat over a sustained A3 chord, written as 16-bit WAV."""
    t = np.arange(int(seconds * SR)) / SR
    y = 0.2 * sum(np.sin(2 * np.pi * freq * r * t) for r in (1.0, 1.2, 1.5))
    for b in np.arange(0, seconds, 60.0 / bpm):
        i = int(b * SR)
        n = min(2000, y.size - i)
        y[i:i + n] += 0.8 * np.exp(-np.arange(n) / 200.0) * np.sin(2 * np.pi * 60 * np.arange(n) / SR)
    sf.write(path, (0.5 * y / np.abs(y).max()).astype(np.float32), SR, subtype="PCM_16")
    return path


# ---- backend (b): a local OpenAI-compatible chat server ------------------------------------------

class ChatServer:
    """Answers /v1/chat/completions with queued replies and keeps every request body."""

    def __init__(self, replies: list[str]):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                text = outer.replies[min(len(outer.requests), len(outer.replies)) - 1]
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


VOCAL = ('```json\n{"genre": ["Pop", "synth-pop"], "subgenre": ["dance pop"], "instrument": ["Synth", "drums"], '
         '"tempo": ["upbeat"], "mood": ["happy"], "has_vocal": true, "vocal": ["female"], '
         '"lyrics": "[Verse]\\nhello world\\n[Chorus]:\\nla la la"}\n```')
VOCAL_2 = ('{"genre": ["pop"], "subgenre": [], "instrument": ["piano", "This track features a lovely piano"], '
           '"tempo": ["120 bpm"], "mood": ["happy", "bright"], "has_vocal": true, "vocal": ["female vocal"], '
           '"lyrics": "(Chorus)\\nsing it again"}')
INSTR = ('{"genre": ["ambient"], "subgenre": [], "instrument": ["pad"], "tempo": ["slow"], "mood": ["calm"], '
         '"has_vocal": false, "vocal": [], "lyrics": ""}')


@pytest.fixture
def songs(tmp_path):
    d = tmp_path / "songs"
    d.mkdir()
    _song(d / "a_vocal.wav", 5.0)
    _song(d / "b_inst.flac", 3.0, bpm=100.0, freq=261.6)
    (d / "a_vocal.json").write_text(json.dumps({"language": "en", "bpm": 1}), encoding="utf-8")
    return d


def test_server_backend_writes_fork_sidecars_and_checks_requests(songs):
    server = ChatServer([VOCAL, VOCAL_2, VOCAL_2, INSTR])
    try:
        code = run_command("caption", ["--data_dir", str(songs), "--server_url", server.url, "--server_model",
                                       "test-model", "--lyrics", "--chunk_seconds", "2", "--overwrite"])
    finally:
        server.close()
    assert code == 0
    # a_vocal (5 s) is sent as 3 chunks of <= 2 s, b_inst (3 s) as 2; replies are queued in that order
    assert len(server.requests) == 5
    for path, body in server.requests:
        assert path == "/v1/chat/completions"
        assert body["model"] == "test-model"
        assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        audio, text = body["messages"][1]["content"]
        assert text == {"type": "text", "text": LYRICS_PROMPT}
        assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "wav"
        wav, rate = sf.read(io.BytesIO(base64.b64decode(audio["input_audio"]["data"])))
        assert rate == 16000 and wav.ndim == 1 and 1.4 * 16000 < wav.shape[0] <= 2 * 16000
    prompt = (songs / "a_vocal_prompt.txt").read_text(encoding="utf-8")
    tags = prompt.split(", ")
    assert tags[:2] == ["pop", "happy"]  # named by all 3 chunks come first
    assert set(tags) == {"pop", "synth-pop", "dance pop", "synth", "drums", "upbeat", "happy", "female vocal",
                         "piano", "bright"}  # lower-cased, de-duplicated, prose and BPM dropped
    assert not prompt.endswith("\n")
    lyrics = (songs / "a_vocal_lyrics.txt").read_text(encoding="utf-8")
    assert lyrics.startswith("[verse]\nhello world\n\n[chorus]\nla la la") and "[chorus]\nsing it again" in lyrics
    # b_inst: its chunks answered VOCAL_2 then INSTR -> has a voice by vote of any chunk
    assert (songs / "b_inst_prompt.txt").exists()
    meta = json.loads((songs / "a_vocal.json").read_text(encoding="utf-8"))
    assert meta["language"] == "en" and 30 <= meta["bpm"] <= 300 and meta["keyscale"].split()[1] in ("major", "minor")
    assert json.loads((songs / "b_inst.json").read_text(encoding="utf-8"))["bpm"] > 0


def test_instrumental_and_skip_then_overwrite(songs, capsys):
    server = ChatServer([INSTR])
    try:
        args = ["--data_dir", str(songs), "--server_url", server.url + "/v1", "--lyrics", "--format", "acestep15"]
        assert run_command("caption", args) == 0
        first = len(server.requests)
        assert run_command("caption", args) == 0  # everything exists: no request, nothing rewritten
        assert len(server.requests) == first == 2
        assert "skipped (sidecars exist)" in capsys.readouterr().err
        assert run_command("caption", args + ["--overwrite"]) == 0
        assert len(server.requests) == 4
    finally:
        server.close()
    for stem in ("a_vocal", "b_inst"):
        assert (songs / sidecar_name("acestep15", "lyrics", stem)).read_text(encoding="utf-8") == INSTRUMENTAL
        assert (songs / sidecar_name("acestep15", "prompt", stem)).read_text(encoding="utf-8") == \
            "ambient, pad, slow, calm"
    assert not (songs / "a_vocal_prompt.txt").exists()  # fork names not written under acestep15


def test_bad_input_one_line_each_rest_processed(songs, tmp_path, capsys):
    (songs / "broken.mp3").write_bytes(b"not audio at all" * 100)
    closed = ChatServer([INSTR])
    url = closed.url
    closed.close()  # nothing listens there any more
    code = run_command("caption", ["--data_dir", str(songs), "--server_url", url, "--strict"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("  [error]")]
    assert len(lines) == 2 and sum("broken.mp3" in line for line in lines) == 1
    assert sum("cannot reach the captioning server" in line for line in lines) == 1
    assert "2 problem(s)" in err
    assert json.loads((songs / "b_inst.json").read_text(encoding="utf-8"))["bpm"] > 0  # still measured
    assert not (songs / "b_inst_prompt.txt").exists()

    code = run_command("caption", ["--data_dir", str(songs), "--model_path", str(tmp_path / "nope"), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("model folder not found") == 1  # no song got its caption: not a success
    assert "none of the 3 songs got its files" in err
    assert (songs / "a_vocal.json").exists()


def test_usage_errors(songs, capsys):
    assert run_command("caption", ["--data_dir", str(songs)]) == 1
    assert "--no-tags" in capsys.readouterr().err
    assert run_command("caption", ["--data_dir", str(songs), "--no-tags"]) == 0
    assert not list(songs.glob("*_prompt.txt")) and (songs / "b_inst.json").exists()
    assert run_command("caption", ["--data_dir", str(songs), "--server_url", "x", "--model_path", "y"]) == 1


def test_files_limits_the_run_to_named_songs(songs, capsys):
    """`--files` (the studio's "caption selection"): only those songs; an unknown name is one error line."""
    assert run_command("caption", ["--data_dir", str(songs), "--dry_run", "--files", "b_inst.flac"]) == 0
    out = capsys.readouterr().out
    assert "b_inst.flac: would write" in out and "a_vocal" not in out
    assert run_command("caption", ["--data_dir", str(songs), "--dry_run", "--files", "nope.wav"]) == 1
    assert "--files names songs not in --data_dir: nope.wav" in capsys.readouterr().err


# ---- backend (a): tiny random Qwen2.5-Omni thinker in the official folder layout ---------------

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
           "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]


def make_tiny_qwen_omni(folder: Path) -> Path:
    """config.json (model_type qwen2_5_omni with thinker_config), sharded safetensors with the
    official `thinker.*` names (plus one `talker.*` weight that must be skipped), tokenizer files
    and preprocessor_config.json (a 2 s window so chunking is exercised)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2TokenizerFast,
        WhisperFeatureExtractor,
    )

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TAGS_PROMPT, LYRICS_PROMPT, SYSTEM_PROMPT, VOCAL] * 3, trainer)
    ids = {s: tok.token_to_id(s) for s in SPECIAL}
    Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=2, hop_length=160,
                            n_fft=400).save_pretrained(folder)
    thinker = dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, n_window=50),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]}),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"], user_token_id=0,
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"])
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    config.save_pretrained(folder)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config.thinker_config)
    official = {}  # transformers' module names -> the names in Qwen's released shards
    for k, v in model.state_dict().items():
        for ours, theirs in (("model.language_model.", "thinker.model."), ("model.audio_tower.", "thinker.audio_tower."),
                             ("model.visual.", "thinker.visual."), ("lm_head.", "thinker.lm_head.")):
            if k.startswith(ours):
                official[theirs + k[len(ours):]] = v.detach().clone().contiguous()
                break
        else:
            raise AssertionError(k)
    official["talker.codec_head.weight"] = torch.zeros(4, 4)
    names = sorted(official)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: official[k] for k in keys}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def test_qwen_omni_backend_real_load_and_generate(songs, tmp_path, monkeypatch):
    from acetune.captioning import backends

    folder = make_tiny_qwen_omni(tmp_path / "Qwen2.5-Omni-tiny")
    backend = backends.QwenOmniBackend(folder, device="cpu", dtype="float32", max_new_tokens=12)
    assert backend.window_seconds == 2.0 and not backends.is_gptq_folder(folder)
    ref = {k.removeprefix("thinker.").replace("model.", "model.language_model.", 1) if k.startswith("thinker.model.")
           else k.removeprefix("thinker.").replace("audio_tower.", "model.audio_tower.", 1): k
           for k in json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]}
    assert "model.language_model.embed_tokens.weight" in ref and len(backend.model.state_dict()) == len(ref) - 1

    calls = []
    real_generate = backend.model.generate

    def spy(**kw):
        calls.append(kw)
        return real_generate(**kw)

    monkeypatch.setattr(backend.model, "generate", spy)
    monkeypatch.setattr("acetune.stages.caption.make_backend", lambda args: backend)
    code = run_command("caption", ["--data_dir", str(songs), "--model_path", str(folder), "--overwrite"])
    assert code == 0
    assert len(calls) == 3 + 2  # 5 s and 3 s songs in 2 s windows
    ids = calls[0]["input_ids"][0].tolist()
    audio_id = backend.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert ids.count(audio_id) == 42  # 1.67 s -> 167 mel frames -> 84 after the conv -> 42 after pooling
    assert calls[0]["input_features"].shape == (1, 128, 200)
    for stem in ("a_vocal", "b_inst"):  # written whatever a random model says, unless it says nothing usable
        prompt = songs / f"{stem}_prompt.txt"
        assert prompt.exists() and prompt.read_text(encoding="utf-8").strip()
        assert json.loads((songs / f"{stem}.json").read_text(encoding="utf-8"))["keyscale"]


# ---- tag and lyric rules -------------------------------------------------------------------------

def test_tag_rules():
    assert clean_tags([" Rock ", "rock", "ELECTRIC GUITAR.", "120 BPM", "", "...", "this song is really great",
                       "a very long tag with far too many words", '"Dreamy"']) == ["rock", "electric guitar", "dreamy"]
    c = parse_response("Sure! Here are tags: rock, Indie Pop\nguitar")
    assert c.tags == ["rock", "indie pop", "guitar"] and c.has_vocal is None and not c.parsed_json
    cut = parse_response('{"genre": ["jazz", "swing"], "mood": ["smoky", "late ni')  # cut by max tokens
    assert cut.parsed_json and cut.tags[:2] == ["jazz", "swing"]
    m = merge_captions([parse_response(INSTR), parse_response(VOCAL)])
    assert m.has_vocal is True and m.tags[0] == "ambient"
    assert clean_lyrics("  [VERSE 1]\nline one  \n\n\n\nline two\n(chorus):\nhey") == \
        "[verse 1]\nline one\n\nline two\n\n[chorus]\nhey"
