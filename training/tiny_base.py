"""A random-weight Mistral-architecture base + digit-splitting tokenizer, built in code.

Used where no pretrained weights can be fetched: the offline CPU chain test (a tiny shape),
and the GPU measurements (a ~1B shape, or Mistral-7B's exact shape).  The tokenizer is a
byte-level BPE trained on the prompts of the given narratives, with Mistral's special tokens
(``<unk>``=0, ``<s>``=1, ``</s>``=2) and ``pre_tokenizers.Digits(individual_digits=True)`` so a
code is always one token per digit (the label contract of :mod:`soi_batch.encoding`).

    python -m training.tiny_base OUT [--shape tiny|1b|7b] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from soi_batch.prompt import PromptTemplate

log = logging.getLogger(__name__)
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"


@dataclass(frozen=True)
class BaseShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int = 4096


SHAPES: dict[str, BaseShape] = {
    "tiny": BaseShape(64, 128, 2, 4, 2, vocab_size=600, max_position_embeddings=1024),
    # ~1.1B parameters: Mistral's layout (GQA 4:1, SwiGLU 3.5x) at half the width and 16 layers
    "1b": BaseShape(2048, 7168, 16, 16, 4, vocab_size=32000),
    # mistralai/Mistral-7B-v0.1's config.json
    "7b": BaseShape(4096, 14336, 32, 32, 8, vocab_size=32000, max_position_embeddings=32768),
}


def build_tokenizer(texts: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """Byte-level BPE with single-digit tokens and Mistral's special-token ids; BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD)
    fast.padding_side = "right"
    return fast


def build_base(
    out: str | Path,
    narratives: list[str],
    shape: BaseShape | str = "tiny",
    *,
    dtype: str = "float32",
    seed: int = 0,
    device: str = "cpu",
    head_scale: float = 1.0,
) -> Path:
    """Save a random ``MistralForCausalLM`` (safetensors) and its tokenizer into ``out``.

    ``head_scale`` multiplies the LM head: random init gives near-flat next-token
    distributions; a larger head makes probabilities differ visibly (engine tests)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    prompt = PromptTemplate()
    texts = [prompt.render(t) + "0123456789" for t in narratives]
    tokenizer = build_tokenizer(texts, shape.vocab_size)
    config = MistralConfig(
        vocab_size=max(shape.vocab_size, len(tokenizer)),
        **{k: v for k, v in asdict(shape).items() if k != "vocab_size"},
        sliding_window=None, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["MistralForCausalLM"]
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    with torch.device(device):
        model = MistralForCausalLM(config).to(torch_dtype)
    if head_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(head_scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    log.info("random Mistral base: %.3fB parameters, vocab %d, saved to %s", n / 1e9, len(tokenizer), out)
    del model
    return out


def main(argv: list[str] | None = None) -> int:
    from soi_batch.commands.options import add_logging_options, configure_logging
    from soi_batch.datasets.osha import load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-texts", type=int, default=4000, help="narratives the tokenizer is trained on")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    parts, _ = load_split()
    texts = parts["train"]["Final Narrative"].iloc[: args.max_texts].tolist()
    build_base(args.out, texts, args.shape, dtype=args.dtype, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
