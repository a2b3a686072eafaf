"""The engine interface: a causal LM that scores the next label token after a prompt.

The label scorer (``soi_batch.scorer``) walks the OIICS trie level by level and asks the
engine for one thing only: for a batch of (report, code prefix) branches, the model's
log-scores of the eleven label tokens that may come next — the digits ``0``..``9`` and
end-of-sequence — at the position after ``prompt + prefix``.  Any per-row constant shift is
allowed (raw logits or log-probabilities): the scorer renormalises over the tokens the trie
allows.  Engines never decode text.

Call sequence for one batch of reports::

    handle, root = engine.prefill(prompt_ids)            # root: [n_reports, 11]
    scores = engine.extend(handle, rows, prefixes)        # [n_branches, 11], any number of times
    engine.release(handle)

``rows[i]`` is the report index of branch ``i`` and ``prefixes[i]`` the label token ids
already chosen (all branches of one call have the same length).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

N_LABEL_TOKENS = 11
"""Digits 0-9 then EOS, in this order, in every ``label_token_ids`` and score row."""
EOS_SLOT = 10


class Engine(ABC):
    """Scores label tokens under a causal LM loaded from a model bundle."""

    label_token_ids: tuple[int, ...]
    """Token ids of ``"0"``..``"9"`` (as they follow the prompt) and of EOS: 11 ids."""

    @abstractmethod
    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, np.ndarray]:
        """Run the prompts; return a handle for ``extend`` and the root scores ``[n, 11]``."""

    @abstractmethod
    def extend(self, handle: Any, rows: np.ndarray, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores ``[len(rows), 11]`` of the token after ``prompt[rows[i]] + prefixes[i]``."""

    def release(self, handle: Any) -> None:
        """Free what ``prefill`` kept (KV caches); the handle is not used again."""

    @property
    @abstractmethod
    def max_prompt_tokens(self) -> int:
        """Longest prompt (in tokens) the engine accepts, leaving room for the label."""

    @property
    def name(self) -> str:
        return type(self).__name__
