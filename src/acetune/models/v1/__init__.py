"""ACE-Step v1 (3.5B) model family: transformer, lyric encoder, loading."""

from acetune.models.v1.transformer import (
    ACEStepTransformer2DModel,
    Transformer2DModelOutput,
    tiny_transformer_config,
)

__all__ = ["ACEStepTransformer2DModel", "Transformer2DModelOutput", "tiny_transformer_config"]
