"""soi-mini's own byte-level BPE tokenizer, digits split one per token.

The answer after ``### Response:\\n`` is the code's digits then EOS, so the tokenizer must
never merge across that boundary nor between digits: ``Digits(individual_digits=True)`` runs
before the byte-level split, and :func:`check_label_contract` verifies the property the engine
relies on (``tok(prompt + "8621") == tok(prompt) + [id("8"), id("6"), id("2"), id("1")]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from soi_batch.errors import TokenizerError

log = logging.getLogger(__name__)

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; BOS is prepended by the post-processor."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    norm = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD
    )
    fast.padding_side = "right"
    log.info("trained BPE tokenizer: %d tokens", len(fast))
    return fast


def digit_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Token ids of ``"0"``..``"9"``."""
    return [int(tokenizer.convert_tokens_to_ids(str(d))) for d in range(10)]


def check_label_contract(tokenizer: PreTrainedTokenizerFast, prompt: str, codes: Iterable[str] = ("8621",)) -> None:
    """Raise unless ``tok(prompt + code) == tok(prompt) + digit ids of code`` for every code."""
    base = tokenizer(prompt).input_ids
    ids = digit_ids(tokenizer)
    if tokenizer.unk_token_id in ids:
        raise TokenizerError("tokenizer has no single token for some digit 0-9; retrain it with the digits in its alphabet")
    for code in codes:
        got = tokenizer(prompt + code).input_ids
        want = base + [ids[int(d)] for d in code]
        if got != want:
            raise TokenizerError(
                f"tokenizer merges the label {code!r} with the prompt: {got[-8:]} != {want[-8:]}; "
                "digits must be split one per token (pre_tokenizers.Digits(individual_digits=True))"
            )
