"""UMT5 text encoder + tokenizer for ACE-Step v1 prompts, loaded from the official `umt5-base/` folder.

The reference encodes prompts in three places, with one tokenisation (`padding=True,
truncation=True, max_length=256`, returning the tokenizer's attention mask):

- training data (`Text2MusicDataset.get_item` + `preprocess_dataset_new.get_text_embeddings`):
  the prompt is first cut to 256 **characters** (`prompt[:256]`), then tokenised;
- inference (`ACEStepPipeline.get_text_embeddings`): the prompt is tokenised as given, no cut;
- the ERG-tag "null" condition (`ACEStepPipeline.get_text_embeddings_null`): as inference, but the
  self-attention q projections of encoder blocks 8 and 9 are multiplied by 0.01.

`encode(texts, path="dataset" | "pipeline")` names the first two; `encode_erg_null` is the third.
`save_tiny_umt5` writes a tiny random UMT5 folder in the official layout for tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import transformers
from packaging.version import Version

from acetune.errors import CheckpointError

logger = logging.getLogger(__name__)

# Files of the official `umt5-base/` folder (HF `ACE-Step/ACE-Step-v1-3.5B`).
UMT5_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json")

TEXT_MAX_TOKENS = 256  # `text_max_length` of the reference's get_text_embeddings
PROMPT_MAX_CHARS = 256  # `prompt[:256]` in Text2MusicDataset (training data only)
ERG_TAG_TAU = 0.01  # get_text_embeddings_null: tau, blocks l_min=8 .. l_max=10 (exclusive)
ERG_TAG_BLOCKS = (8, 9)

EncodePath = Literal["dataset", "pipeline"]


def check_umt5_folder(folder: str | Path) -> Path:
    """Raise CheckpointError unless `folder` holds every file of the official umt5-base layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            "text encoder folder not found", path=folder,
            fix="point --checkpoint_dir at the ACE-Step v1 checkpoint (it holds umt5-base/)",
        )
    missing = [name for name in UMT5_FILES if not (folder / name).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(
            f"incomplete UMT5 folder: missing {', '.join(missing)} (found: {', '.join(present) or 'nothing'})",
            path=folder, fix="re-download umt5-base/ from ACE-Step/ACE-Step-v1-3.5B",
        )
    return folder


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    # transformers renamed `torch_dtype` to `dtype` in 4.56; the old name warns in 5.x.
    if Version(transformers.__version__) >= Version("4.56"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


class TextEncoder:
    """UMT5 encoder + its tokenizer, frozen, in eval mode.

    Attributes: `model` (`transformers.UMT5EncoderModel`), `tokenizer` (its fast tokenizer).
    """

    def __init__(self, model, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> TextEncoder:
        """Load `umt5-base/` (config.json, model.safetensors, tokenizer files) without touching the hub."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = check_umt5_folder(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model, info = UMT5EncoderModel.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, output_loading_info=True,
                **_dtype_kwarg(dtype),
            )
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"cannot load UMT5: {str(err).splitlines()[0]}", path=folder,
                fix="re-download umt5-base/ from ACE-Step/ACE-Step-v1-3.5B",
            ) from err
        # transformers only warns about missing weights and leaves them random: refuse instead.
        # (`shared.weight` / `encoder.embed_tokens.weight` are one tied tensor; either suffices.)
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("embed_tokens.weight")]
        if missing:
            raise CheckpointError(
                f"model.safetensors lacks {len(missing)} UMT5 encoder weights (e.g. {missing[0]})",
                path=folder / "model.safetensors", fix="re-download umt5-base/model.safetensors",
            )
        return cls(model.to(device=device, dtype=dtype), tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, texts: Sequence[str], path: EncodePath = "dataset") -> dict[str, torch.Tensor]:
        """Token ids and mask (both int64, (N, T) with T = longest item, at most 256), on the model's device."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if path == "dataset":
            texts = [t[:PROMPT_MAX_CHARS] for t in texts]
        elif path != "pipeline":
            raise ValueError(f"path must be 'dataset' or 'pipeline', not {path!r}")
        inputs = self.tokenizer(
            list(texts), return_tensors="pt", padding=True, truncation=True, max_length=TEXT_MAX_TOKENS
        )
        return {k: inputs[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def encode(self, texts: Sequence[str], path: EncodePath = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        Args:
            texts: N prompts.
            path: "dataset" (training data: cut each prompt to 256 characters first, as
                `Text2MusicDataset`) or "pipeline" (inference: `ACEStepPipeline.get_text_embeddings`).
        Returns:
            last_hidden_state (N, T, d_model) in the model dtype, and the tokenizer's
            attention_mask (N, T) int64 (1 = token, 0 = padding; the reference casts it later).
        """
        inputs = self.tokenize(texts, path)
        hidden = self.model(**inputs).last_hidden_state
        return hidden, inputs["attention_mask"]

    @torch.no_grad()
    def encode_erg_null(self, texts: Sequence[str]) -> torch.Tensor:
        """The ERG-tag unconditional text states (`get_text_embeddings_null`): (N, T, d_model).

        Same tokens and mask as `encode(texts, path="pipeline")`.
        """
        inputs = self.tokenize(texts, "pipeline")
        with erg_tag_temperature(self.model):
            return self.model(**inputs).last_hidden_state


@contextlib.contextmanager
def erg_tag_temperature(
    model, tau: float = ERG_TAG_TAU, blocks: Sequence[int] = ERG_TAG_BLOCKS
) -> Iterator[None]:
    """Within the block, scale the self-attention q projection outputs of `blocks` by `tau`."""
    n_blocks = len(model.encoder.block)
    if max(blocks) >= n_blocks:
        raise ValueError(f"ERG tag needs at least {max(blocks) + 1} UMT5 blocks, this model has {n_blocks}")

    def scale(_module, _inputs, output):
        return output * tau

    handles = [model.encoder.block[i].layer[0].SelfAttention.q.register_forward_hook(scale) for i in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---- tiny test folder ----

# A few genre/instrument/mood words, enough for the trainer to learn sub-word pieces.
_TINY_CORPUS = (
    "pop, rock, electronic, female vocals, 120 bpm, upbeat, catchy",
    "ambient piano with soft strings and warm pads, slow, dreamy",
    "hip hop, trap, male rap, heavy 808 bass, hi-hats, dark",
    "jazz trio, double bass, brushed drums, saxophone solo, swing",
    "metal, distorted guitars, fast double kick, aggressive screams",
    "folk, acoustic guitar, harmonica, storytelling, country, banjo",
    "techno, four on the floor, synth bass, minimal, 128 bpm, club",
    "orchestral, cinematic, epic choir, brass, timpani, strings",
    "lofi, chill, vinyl crackle, mellow keys, relaxed, study",
    "reggae, dub, offbeat guitar, deep bass, sunny, island",
)


def _train_tiny_tokenizer(vocab_size: int):
    """A Unigram tokenizer with UMT5's special ids (pad 0, eos 1, unk 2), Metaspace, `</s>` appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(list(_TINY_CORPUS) * 4, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return tok


def save_tiny_umt5(folder: str | Path, *, num_layers: int = 10, d_model: int = 16, seed: int = 0) -> Path:
    """Write a tiny random UMT5 encoder + trained tokenizer in the official `umt5-base/` layout.

    10 layers by default so the ERG-tag blocks 8 and 9 exist. Returns the folder.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _train_tiny_tokenizer(vocab_size=160)
    tok.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tok_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))

    config = UMT5Config(
        vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=num_layers,
        num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng():  # don't disturb the caller's global RNG
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config)
    model.save_pretrained(folder, safe_serialization=True)  # config.json + model.safetensors
    return folder
