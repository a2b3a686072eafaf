"""A tiny random Mistral bundle built in code (no hub), for engine and scorer tests."""

from __future__ import annotations

from pathlib import Path

from soi_batch.bundle import new_manifest, write_manifest
from soi_batch.prompt import PromptTemplate
from training.tiny_base import BaseShape, build_base


def build_tiny_bundle(out: Path, texts: list[str], *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Random-weight ``MistralForCausalLM`` + digit-splitting BPE tokenizer + manifest in ``out``.

    The LM head is scaled ×20 so that label probabilities differ visibly between branches.
    """
    shape = BaseShape(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=600, max_position_embeddings=512)
    build_base(out, texts, shape, seed=seed, head_scale=20.0)
    write_manifest(out, new_manifest(model_id="tiny-random", model_version="0", prompt=PromptTemplate()))
    return out
