"""Label scoring over the OIICS trie: the model never writes text, it ranks valid codes.

Every label is a path of digit tokens ending in EOS.  At each trie node the engine's scores
for the eleven label tokens are divided by the temperature and renormalised over the tokens
the trie allows there (digits that continue a valid code, plus EOS where the node is itself
a label), so

    P(code) = Π_i P(d_i | prompt, d_<i) × P(EOS | prompt, code)

sums to 1 over the label set, and a node's path probability equals the sum over its subtree.

Search: the root and every division are always expanded, so division and major-group
probabilities are exact.  Deeper nodes are expanded for the ``beam`` most probable ones per
level plus the greedy path; labels under unexpanded nodes keep their mass as
``unexplored``.  ``beam=None`` expands the whole trie (exact, for tests and audits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from soi_batch.engines.base import Engine
from soi_batch.errors import ConfigError, LabelSetError
from soi_batch.taxonomy import EOS_SLOT, LABEL_DIGITS, N_LABEL_TOKENS

_NEG = -np.inf


class LabelTrie:
    """The label set as a trie over digits; node 0 is the root (empty prefix)."""

    def __init__(self, labels: Sequence[str]) -> None:
        prefixes = {""}
        for label in labels:
            if not label or not set(label) <= set(LABEL_DIGITS):
                raise LabelSetError(f"label {label!r} is not a string of digits; labels are OIICS codes such as "
                                    "'66' or '8621' (see soi_batch.taxonomy)")
            prefixes.update(label[:i] for i in range(1, len(label) + 1))
        self.nodes: list[str] = sorted(prefixes, key=lambda p: (len(p), p))
        self.index = {p: i for i, p in enumerate(self.nodes)}
        n = len(self.nodes)
        self.child = np.full((n, len(LABEL_DIGITS)), -1, dtype=np.int64)
        self.is_label = np.zeros(n, dtype=bool)
        for label in labels:
            self.is_label[self.index[label]] = True
        for p, i in self.index.items():
            if p:
                self.child[self.index[p[:-1]], LABEL_DIGITS.index(p[-1])] = i
        self.allowed = np.concatenate([self.child >= 0, self.is_label[:, None]], axis=1)
        self.depth = np.array([len(p) for p in self.nodes])
        self.branching = self.allowed.sum(axis=1)
        self.divisions = np.array([i for i, p in enumerate(self.nodes) if len(p) == 1])
        self.major_groups = np.array([i for i, p in enumerate(self.nodes) if len(p) == 2])
        self.labels = np.flatnonzero(self.is_label)
        self.max_depth = int(self.depth.max())
        self.parent = np.array([self.index[p[:-1]] if p else -1 for p in self.nodes])

    @property
    def first_digits(self) -> tuple[int, ...]:
        """The digits a label may start with (its divisions: 1-9 for OIICS), in slot order."""
        return tuple(LABEL_DIGITS.index(self.nodes[i]) for i in self.divisions)

    def ancestor_at(self, node: np.ndarray, depth: int) -> np.ndarray:
        """Index of each node's ancestor at ``depth`` (nodes must be at least that deep)."""
        out = np.asarray(node).copy()
        while True:
            deeper = self.depth[out] > depth
            if not deeper.any():
                return out
            out[deeper] = self.parent[out[deeper]]


@dataclass(frozen=True)
class ScorerConfig:
    beam: int | None = 3
    """Major groups and groups expanded per report besides the greedy path (None: all)."""
    temperature: float = 1.0
    """Every step's scores are divided by this before the softmax: finite and > 0."""

    def __post_init__(self) -> None:
        check_beam(self.beam)
        check_temperature(self.temperature)


def check_beam(beam: object) -> None:
    """``beam`` must be a whole number ≥ 1, or None (expand the whole trie)."""
    if beam is not None and (not isinstance(beam, Integral) or isinstance(beam, bool) or beam < 1):
        raise ConfigError(f"beam must be a whole number ≥ 1, or None to expand the whole trie; got {beam!r}")


def check_temperature(temperature: object, *, none_means: str | None = None) -> None:
    """``temperature`` must be a finite number > 0 (it divides the logits); None only if ``none_means`` says what."""
    if temperature is None and none_means is not None:
        return
    ok = isinstance(temperature, Real) and not isinstance(temperature, bool)
    if not ok or not 0 < temperature < math.inf:  # type: ignore[operator]
        allowed = f", or None for {none_means}" if none_means else ""
        raise ConfigError(f"temperature must be a finite number > 0 (the scores are divided by it before the "
                          f"softmax){allowed}; got {temperature!r}")


@dataclass
class ScoreBatch:
    """Probabilities for a batch of reports (rows) over the trie's nodes."""

    trie: LabelTrie
    path_logp: np.ndarray
    """[n, nodes] log-probability of each prefix (its subtree's mass); -inf where unknown."""
    label_logp: np.ndarray
    """[n, nodes] log-probability that the answer is exactly this node's code; -inf where unknown."""
    division: np.ndarray
    major_group: np.ndarray
    code: np.ndarray
    """[n] node index of the greedy division, major group within it, label within that."""

    def probs(self, nodes: np.ndarray) -> np.ndarray:
        return np.exp(self.path_logp[:, nodes])

    @property
    def unexplored(self) -> np.ndarray:
        return 1.0 - np.exp(self.label_logp).sum(axis=1)


@dataclass(frozen=True)
class PathSteps:
    """The engine's raw scores along one code's path (for temperature fitting)."""

    scores: np.ndarray
    """[depth + 1, 11] scores at the root, at each prefix, and at the full code (for EOS)."""
    allowed: np.ndarray
    target: np.ndarray


class LabelScorer:
    """Walks the trie with an :class:`Engine`; see the module docstring for the maths."""

    def __init__(self, engine: Engine, trie: LabelTrie, config: ScorerConfig = ScorerConfig()) -> None:
        self.engine = engine
        self.trie = trie
        self.config = config
        self._label_ids = np.asarray(engine.label_token_ids, dtype=np.int64)
        self._node_tokens = [tuple(int(self._label_ids[LABEL_DIGITS.index(d)]) for d in p) for p in trie.nodes]

    def _step_logp(self, scores: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Temperature-scaled log-softmax of engine scores over each node's allowed tokens."""
        z = np.where(self.trie.allowed[nodes], scores.astype(np.float64) / self.config.temperature, _NEG)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def score(self, prompts: Sequence[Sequence[int]]) -> ScoreBatch:
        trie, n = self.trie, len(prompts)
        path = np.full((n, len(trie.nodes)), _NEG)
        label = np.full_like(path, _NEG)
        path[:, 0] = 0.0
        handle, root = self.engine.prefill(prompts)
        try:
            self._apply(path, label, np.arange(n), np.zeros(n, dtype=np.int64), root)
            greedy = np.zeros(n, dtype=np.int64)
            for depth in range(1, trie.max_depth + 1):
                self._propagate_forced(path, label, depth)
                at_depth = np.flatnonzero((trie.depth == depth) & (trie.branching > 1))
                if at_depth.size == 0:
                    continue
                greedy = self._greedy_child(path, greedy)
                rows, nodes = self._select(path, at_depth, greedy, expand_all=depth == 1)
                if rows.size:
                    scores = self.engine.extend(handle, rows, [self._node_tokens[i] for i in nodes])
                    self._apply(path, label, rows, nodes, scores)
        finally:
            self.engine.release(handle)
        return self._decode(path, label)

    def _apply(self, path: np.ndarray, label: np.ndarray, rows: np.ndarray, nodes: np.ndarray,
               scores: np.ndarray) -> None:
        step = self._step_logp(np.asarray(scores), nodes)
        base = path[rows, nodes]
        for slot in range(len(LABEL_DIGITS)):
            kids = self.trie.child[nodes, slot]
            ok = kids >= 0
            path[rows[ok], kids[ok]] = base[ok] + step[ok, slot]
        is_label = self.trie.is_label[nodes]
        label[rows[is_label], nodes[is_label]] = base[is_label] + step[is_label, EOS_SLOT]

    def _propagate_forced(self, path: np.ndarray, label: np.ndarray, depth: int) -> None:
        """Nodes at ``depth`` with one allowed token pass their whole mass on: no model call."""
        forced = np.flatnonzero((self.trie.depth == depth) & (self.trie.branching == 1))
        for node in forced:
            if self.trie.is_label[node]:
                label[:, node] = path[:, node]
            else:
                path[:, self.trie.child[node][self.trie.child[node] >= 0][0]] = path[:, node]

    def _greedy_child(self, path: np.ndarray, parent: np.ndarray) -> np.ndarray:
        """Most probable child of each row's greedy node (stays put at a leaf)."""
        kids = self.trie.child[parent]
        lp = np.where(kids >= 0, path[np.arange(len(parent))[:, None], np.maximum(kids, 0)], _NEG)
        best = lp.argmax(axis=1)
        has = np.isfinite(lp.max(axis=1))
        return np.where(has, kids[np.arange(len(parent)), best], parent)

    def _select(self, path: np.ndarray, at_depth: np.ndarray, greedy: np.ndarray,
                *, expand_all: bool) -> tuple[np.ndarray, np.ndarray]:
        lp = path[:, at_depth]
        keep = np.isfinite(lp)
        beam = self.config.beam
        if not expand_all and beam is not None and beam < at_depth.size:
            top = np.argpartition(-lp, beam - 1, axis=1)[:, :beam]
            chosen = np.zeros_like(keep)
            np.put_along_axis(chosen, top, True, axis=1)
            chosen |= at_depth[None, :] == greedy[:, None]
            keep &= chosen
        rows, cols = np.nonzero(keep)
        return rows, at_depth[cols]

    def _decode(self, path: np.ndarray, label: np.ndarray) -> ScoreBatch:
        trie, n = self.trie, path.shape[0]
        division = trie.divisions[path[:, trie.divisions].argmax(axis=1)]
        in_div = trie.ancestor_at(trie.major_groups, 1)[None, :] == division[:, None]
        major = trie.major_groups[np.where(in_div, path[:, trie.major_groups], _NEG).argmax(axis=1)]
        labels = trie.labels
        deep = trie.depth[labels] >= 2
        under = np.zeros((n, labels.size), dtype=bool)
        under[:, deep] = trie.ancestor_at(labels[deep], 2)[None, :] == major[:, None]
        code = labels[np.where(under, label[:, labels], _NEG).argmax(axis=1)]
        return ScoreBatch(trie, path, label, division, major, code)

    def path_steps(self, prompts: Sequence[Sequence[int]], codes: Sequence[str]) -> list[PathSteps]:
        """Raw scores along each report's true code path (root, each prefix, the full code)."""
        trie, n = self.trie, len(prompts)
        for code in codes:
            if code not in trie.index or not trie.is_label[trie.index[code]]:
                raise LabelSetError(f"code {code!r} is not in the model's label set ({len(trie.labels)} codes); "
                                    "drop rows whose code the bundle cannot answer")
        depth = max(len(c) for c in codes)
        scores = np.zeros((n, depth + 1, N_LABEL_TOKENS), dtype=np.float32)
        handle, root = self.engine.prefill(prompts)
        try:
            scores[:, 0] = root
            for d in range(1, depth + 1):
                rows = np.array([i for i, c in enumerate(codes) if len(c) >= d], dtype=np.int64)
                if rows.size:
                    prefixes = [self._node_tokens[trie.index[codes[i][:d]]] for i in rows]
                    scores[rows, d] = self.engine.extend(handle, rows, prefixes)
        finally:
            self.engine.release(handle)
        out = []
        for i, code in enumerate(codes):
            nodes = [trie.index[code[:d]] for d in range(len(code) + 1)]
            target = np.array([LABEL_DIGITS.index(digit) for digit in code] + [EOS_SLOT])
            out.append(PathSteps(scores[i, : len(code) + 1].copy(), trie.allowed[nodes].copy(), target))
        return out
