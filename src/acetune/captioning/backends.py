"""Captioning backends: audio in, text out. Plus `caption_audio`, which runs one over a whole song.

- `QwenOmniBackend(folder)`: Qwen2.5-Omni's thinker (audio encoder + language model; the talker
  that speaks is never loaded) from a local folder in the official layout, through transformers.
  bf16/fp16/fp32 checkpoints load with `Qwen2_5OmniThinkerForConditionalGeneration`; a GPTQ
  checkpoint (e.g. Qwen2.5-Omni-7B-GPTQ-Int4, what the woct0rdho fork uses) loads through
  gptqmodel (`pip install acetune[gptq]`).
- `OpenAIChatBackend(url)`: any OpenAI-compatible chat server that accepts `input_audio` content
  parts (base64 WAV), e.g. llama.cpp's `llama-server -m Qwen2.5-Omni-7B-Q8_0.gguf --mmproj ...`.

Both take 16 kHz mono float32 audio no longer than `window_seconds`; `caption_audio` cuts longer
songs into equal chunks and merges the answers (`acetune.captioning.tags.merge_captions`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import numpy as np

from acetune.captioning.prompts import SYSTEM_PROMPT, instruction
from acetune.captioning.tags import Caption, merge_captions, parse_response
from acetune.errors import CheckpointError, InputError, UsageError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Qwen2.5-Omni's audio encoder (Whisper-style 128-bin log-mel at 16 kHz)
SERVER_WINDOW_SECONDS = 300.0  # the same 300 s the Qwen2.5-Omni feature extractor accepts
API_KEY_ENV = ("ACETUNE_API_KEY", "OPENAI_API_KEY")


class Backend(Protocol):
    """Anything that answers an instruction about a chunk of audio."""

    name: str
    window_seconds: float  # longest chunk `generate` accepts

    def generate(self, audio: np.ndarray, prompt: str) -> str:
        """audio: (T,) float32 mono at 16 kHz, T <= window_seconds * 16000. Returns the answer text."""
        ...


def _audio_token_count(mel_frames: int) -> int:
    """Audio-encoder output length for `mel_frames` valid frames: conv stride 2, then 2x pooling.

    Mirrors `_get_feat_extract_output_lengths` in transformers' processing_qwen2_5_omni.py.
    """
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def is_gptq_folder(folder: Path) -> bool:
    """True when config.json carries a GPTQ `quantization_config` or gptqmodel's quantize_config.json exists."""
    if (folder / "quantize_config.json").is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    quant = config.get("quantization_config") or config.get("thinker_config", {}).get("quantization_config") or {}
    return str(quant.get("quant_method", "")).lower() == "gptq"


class QwenOmniBackend:
    """Qwen2.5-Omni thinker from a local folder.

    Args:
        folder: the model folder (config.json with model_type "qwen2_5_omni", safetensors shards,
            tokenizer files, preprocessor_config.json).
        device: "auto" (CUDA if available), "cuda", "cuda:1", "cpu".
        dtype: "bfloat16", "float16" or "float32" for the unquantised weights.
        max_new_tokens: answer length cap (lyrics need ~1000).
        window_seconds: chunk length; default is what the feature extractor accepts (300 s).
    """

    name = "qwen2.5-omni"

    def __init__(self, folder: str | os.PathLike, device: str = "auto", dtype: str = "bfloat16",
                 max_new_tokens: int = 1000, window_seconds: float | None = None):
        import torch
        from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

        folder = Path(folder)
        fix = ("download Qwen/Qwen2.5-Omni-7B (or Qwen2.5-Omni-7B-GPTQ-Int4) into a folder and pass it "
               "to --model_path")
        if not folder.is_dir():
            raise CheckpointError("model folder not found", path=folder, fix=fix)
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (folder / f).is_file()]
        if missing:
            present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
            raise CheckpointError(f"missing {', '.join(missing)} (the folder holds: {present})", path=folder, fix=fix)
        config = AutoConfig.from_pretrained(folder)
        if config.model_type not in ("qwen2_5_omni", "qwen2_5_omni_thinker"):
            raise CheckpointError(f"not a Qwen2.5-Omni model (model_type {config.model_type!r})", path=folder, fix=fix)
        thinker_config = getattr(config, "thinker_config", config)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        device_map = {"": str(self.device)} if self.device.type == "cuda" else None
        if is_gptq_folder(folder):
            self.model = _load_gptq_thinker(folder, device_map or {"": "cpu"}, torch_dtype)
        else:
            from transformers import Qwen2_5OmniThinkerForConditionalGeneration

            # The official folder stores the whole Omni model ("thinker.*", "talker.*", "token2wav.*");
            # transformers strips "thinker." and skips the talker's weights.
            self.model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                folder, config=thinker_config, dtype=torch_dtype, device_map=device_map)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.features = WhisperFeatureExtractor.from_pretrained(folder)
        if self.features.sampling_rate != SAMPLE_RATE:
            raise CheckpointError(f"feature extractor expects {self.features.sampling_rate} Hz, not 16 kHz",
                                  path=folder / "preprocessor_config.json", fix=fix)
        self.window_seconds = float(window_seconds or self.features.n_samples / SAMPLE_RATE)
        ids = self.tokenizer.convert_ids_to_tokens
        self._audio = ids(thinker_config.audio_token_index)
        self._audio_bos = ids(thinker_config.audio_start_token_id)
        self._audio_eos = ids(thinker_config.audio_end_token_id)
        self.max_new_tokens = max_new_tokens

    def _chat(self, n_audio_tokens: int, prompt: str) -> str:
        """Qwen's ChatML with one audio slot in the user turn, as the official chat template renders it."""
        audio = self._audio_bos + self._audio * n_audio_tokens + self._audio_eos
        return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                f"<|im_start|>user\n{audio}{prompt}<|im_end|>\n<|im_start|>assistant\n")

    def generate(self, audio: np.ndarray, prompt: str) -> str:
        import torch

        feats = self.features(audio, sampling_rate=SAMPLE_RATE, return_attention_mask=True,
                              padding="max_length", return_tensors="pt")  # as Qwen2_5OmniProcessor does
        mask = feats["attention_mask"]  # (1, frames)
        n_tokens = _audio_token_count(int(mask.sum()))
        enc = self.tokenizer(self._chat(n_tokens, prompt), return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype.is_floating_point else torch.float16  # GPTQ: packed int weights
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
                input_features=feats["input_features"].to(self.device, dtype),
                feature_attention_mask=mask.to(self.device), max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _load_gptq_thinker(folder: Path, device_map: dict, dtype):
    """The thinker of a GPTQ Qwen2.5-Omni checkpoint, via gptqmodel (which knows qwen2_5_omni)."""
    try:
        from gptqmodel import GPTQModel
    except ImportError:
        raise UsageError("this model folder is a GPTQ checkpoint, and loading it needs gptqmodel", path=folder,
                         fix="pip install 'acetune[gptq]' (needs a CUDA GPU), or use the unquantised "
                             "Qwen2.5-Omni-7B folder") from None
    wrapped = GPTQModel.load(str(folder), device_map=device_map, dtype=dtype)
    full = getattr(wrapped, "model", wrapped)
    if hasattr(full, "disable_talker"):
        full.disable_talker()  # drops the speech generator's weights from memory
    return getattr(full, "thinker", full)


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """(T,) float audio -> 16-bit PCM mono WAV file bytes."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def chat_endpoint(url: str) -> str:
    """"http://host:8080", ".../v1" or ".../v1/chat/completions" -> the chat completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/chat/completions"


class OpenAIChatBackend:
    """An OpenAI-compatible `/v1/chat/completions` server with audio input.

    Args:
        url: server address, e.g. "http://127.0.0.1:8080" (llama-server's default).
        model: the `model` field sent (llama-server ignores it; hosted APIs need it).
        api_key: bearer token; default from $ACETUNE_API_KEY or $OPENAI_API_KEY (never printed).
        window_seconds: longest chunk sent in one request.
    """

    name = "openai-chat"

    def __init__(self, url: str, model: str = "qwen2.5-omni", api_key: str | None = None,
                 max_tokens: int = 1000, timeout: float = 600.0, window_seconds: float | None = None):
        self.endpoint = chat_endpoint(url)
        self.model = model
        self.api_key = api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.window_seconds = float(window_seconds or SERVER_WINDOW_SECONDS)

    def request_body(self, audio: np.ndarray, prompt: str) -> dict:
        data = base64.b64encode(wav_bytes(audio)).decode("ascii")
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                    {"type": "text", "text": prompt},
                ]},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    def generate(self, audio: np.ndarray, prompt: str) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(self.request_body(audio, prompt)).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:200].replace("\n", " ")
            if e.code in (401, 403, 404):
                raise UsageError(f"captioning server refused the request (HTTP {e.code}: {detail})",
                                 path=self.endpoint, fix="check --server_url, --server_model and the API key") from None
            raise InputError(f"captioning server failed on this song (HTTP {e.code}: {detail})",
                             fix="see the server's log; rerun to retry") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise UsageError(f"cannot reach the captioning server ({reason})", path=self.endpoint,
                             fix="start it (e.g. `llama-server -m Qwen2.5-Omni-7B-Q8_0.gguf --mmproj "
                                 "mmproj-Qwen2.5-Omni-7B-Q8_0.gguf -c 32768`) or fix --server_url") from None
        except json.JSONDecodeError:
            raise InputError("captioning server sent a reply that is not JSON", path=self.endpoint,
                             fix="check that --server_url points at an OpenAI-compatible server") from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InputError("captioning server reply has no choices[0].message.content", path=self.endpoint,
                             fix="check that the server supports chat completions with audio input") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content or "")


def split_chunks(audio: np.ndarray, window_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """(T,) -> equal consecutive chunks no longer than `window_seconds` (no tiny tail chunk)."""
    window = max(1, int(window_seconds * sample_rate))
    n = max(1, math.ceil(audio.shape[0] / window))
    size = math.ceil(audio.shape[0] / n)
    return [audio[i * size:(i + 1) * size] for i in range(n)]


def caption_audio(backend: Backend, audio: np.ndarray, with_lyrics: bool) -> tuple[Caption, list[str]]:
    """Caption one song: chunk it to the backend's window, ask, parse, merge.

    Args:
        audio: (T,) float32 mono at 16 kHz.
    Returns:
        (merged caption, the raw answers in chunk order).
    """
    prompt = instruction(with_lyrics)
    answers = [backend.generate(chunk, prompt) for chunk in split_chunks(audio, backend.window_seconds)]
    return merge_captions([parse_response(a) for a in answers]), answers
