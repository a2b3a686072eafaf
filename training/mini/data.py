"""Token id sequences for soi-mini's two stages, from the time-based OSHA split.

* LM stage: ``<s> narrative </s>`` for every train narrative, plus ``<s> title </s>`` for every
  OIICS source code title (the titles name the label space in words).
* Classification stage: ``prompt_ids + digits(code) + [eos]`` where ``prompt_ids`` is exactly what
  the engine feeds (``tokenizer(PromptTemplate().render(narrative)).input_ids``); the answer
  starts at ``answer_start``; the narrative tokens lie in ``[narr_start, narr_end)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerFast

from soi_batch.datasets.osha import LABEL_COL, TEXT_COL
from soi_batch.prompt import PromptTemplate, normalize_narrative
from soi_batch.taxonomy import load_taxonomy
from training.mini.tokenizer import digit_ids

log = logging.getLogger(__name__)


@dataclass
class ClsExample:
    ids: list[int]
    answer_start: int
    narr_start: int
    narr_end: int
    code: str


def tokenizer_corpus(train: pd.DataFrame, prompt: PromptTemplate) -> list[str]:
    """Texts the BPE is trained on: rendered train prompts (so the template gets merges) + titles."""
    texts = [prompt.render(t) for t in train[TEXT_COL]]
    texts += list(load_taxonomy().titles.values())
    return texts


def lm_sequences(
    tok: PreTrainedTokenizerFast, narratives: Iterable[str], max_tokens: int, max_titles: int | None = None
) -> list[list[int]]:
    titles = list(load_taxonomy().titles.values())[:max_titles]
    texts = [normalize_narrative(t, 10**6)[0] for t in narratives] + titles
    out = []
    for ids in tok(texts).input_ids:
        out.append(ids[:max_tokens] + [tok.eos_token_id])
    return out


def cls_examples(
    tok: PreTrainedTokenizerFast, frame: pd.DataFrame, prompt: PromptTemplate, max_narrative_tokens: int
) -> list[ClsExample]:
    digits = digit_ids(tok)
    n_prefix = len(tok(prompt.shared_prefix).input_ids)
    n_suffix = len(tok(prompt.suffix, add_special_tokens=False).input_ids)
    out = []
    prompts = [prompt.render(t) for t in frame[TEXT_COL]]
    for ids, code in zip(tok(prompts).input_ids, frame[LABEL_COL]):
        narr_end = len(ids) - n_suffix
        if narr_end - n_prefix > max_narrative_tokens:  # cut very long narratives (training only)
            ids = ids[: n_prefix + max_narrative_tokens] + ids[narr_end:]
            narr_end = n_prefix + max_narrative_tokens
        answer = [digits[int(d)] for d in code] + [tok.eos_token_id]
        out.append(ClsExample(ids + answer, len(ids), n_prefix, narr_end, code))
    return out


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[n, max_len]`` ids and the attention mask."""
    n = max(len(s) for s in seqs)
    ids = np.full((len(seqs), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), n), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
