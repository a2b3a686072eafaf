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

An engine class also says how it is built and what it supports: ``options_type`` (its typed
options, what ``ClassifierConfig.engine_options`` is converted to), ``build`` (the engine from
:class:`EngineInputs` and those options) and ``supports_concurrent_batches`` /
``default_concurrent_batches``.  :mod:`soi_batch.engines.registry` maps engine names to classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from soi_batch.bundle import ModelBundle


@dataclass(frozen=True)
class EngineInputs:
    """What every engine is built from besides its options: the bundle and the label contract."""

    bundle: ModelBundle
    shared_prefix_ids: tuple[int, ...]
    """Token ids every prompt starts with (the template's shared prefix)."""
    label_token_ids: tuple[int, ...]
    """Token ids of the label alphabet (:data:`soi_batch.taxonomy.LABEL_DIGITS`, then EOS)."""
    first_digits: tuple[int, ...]
    """Digits a label may start with: the label trie's divisions (1-9 for OIICS)."""


class Engine(ABC):
    """Scores label tokens under a causal LM loaded from a model bundle."""

    label_token_ids: tuple[int, ...]
    """Token ids of ``"0"``..``"9"`` (as they follow the prompt) and of EOS: 11 ids."""
    options_type: ClassVar[type[Any]]
    """The engine's typed options (a frozen dataclass checked on construction)."""
    supports_concurrent_batches: ClassVar[bool] = False
    """True when threads may run several batches through one engine at once; False when the
    engine schedules its own batches (``ClassifierConfig.concurrent_batches`` must then be 1)."""

    @classmethod
    @abstractmethod
    def build(cls, inputs: EngineInputs, options: Any) -> Engine:
        """The engine for ``inputs``, loaded with ``options`` (an instance of ``options_type``)."""

    @classmethod
    def default_concurrent_batches(cls, device_type: str) -> int:
        """Batches in flight at once when the user does not say, on a ``device_type`` ("cpu", "cuda")."""
        return 1

    @property
    @abstractmethod
    def device_type(self) -> str:
        """Where the engine runs: "cpu" or "cuda"."""

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
