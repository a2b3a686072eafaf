"""A tiny random Mistral bundle built in code (no hub), for engine and scorer tests."""

from __future__ import annotations

from pathlib import Path

from soi_batch.bundle import new_manifest, write_manifest
from soi_batch.prompt import PromptTemplate


def build_tokenizer(texts: list[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def build_tiny_bundle(out: Path, texts: list[str], *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Random-weight MistralForCausalLM + BPE tokenizer + manifest in ``out``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    prompt = PromptTemplate()
    tokenizer = build_tokenizer([prompt.render(t) + "0123456789" for t in texts])
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, sliding_window=None,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config.architectures = ["MistralForCausalLM"]
    model = MistralForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so probabilities differ visibly
        model.lm_head.weight.mul_(20.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_manifest(out, new_manifest(model_id="tiny-random", model_version="0", prompt=prompt))
    return out
