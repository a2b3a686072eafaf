"""Scorer maths and the HF engine's tree attention, on a tiny random Mistral built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soi_batch.bundle import load_bundle
from soi_batch.encoding import PromptEncoder
from soi_batch.engines.hf import HFEngine
from soi_batch.scorer import LabelScorer, LabelTrie, ScorerConfig


@pytest.fixture(scope="module")
def parts(tiny_bundle, osha):
    bundle = load_bundle(tiny_bundle)
    encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=500)
    engine = HFEngine(bundle, encoder.shared_prefix_ids, encoder.label_token_ids)
    prompts = [e.ids for e in encoder.encode(osha["Final Narrative"].iloc[:6].tolist())]
    return bundle, encoder, engine, prompts


def _naive(engine: HFEngine, ids: list[int], labels: list[int]) -> np.ndarray:
    with torch.no_grad():
        return engine.model(torch.tensor([ids])).logits[0, -1, labels].numpy()


def test_prefill_and_tree_branches_match_full_forward(parts):
    _, encoder, engine, prompts = parts
    lab = list(encoder.label_token_ids)
    handle, root = engine.prefill(prompts)
    for i, ids in enumerate(prompts):
        np.testing.assert_allclose(root[i], _naive(engine, ids, lab), atol=1e-4)
    rows = np.array([0, 0, 1, 2])
    prefixes = [(lab[8],), (lab[6],), (lab[6],), (lab[1],)]
    got = engine.extend(handle, rows, prefixes)
    for j, (r, p) in enumerate(zip(rows, prefixes)):
        np.testing.assert_allclose(got[j], _naive(engine, prompts[r] + list(p), lab), atol=1e-4)
    # deeper branches, one of them with an ancestor never scored before (fed in the same call)
    rows = np.array([0, 3])
    prefixes = [(lab[8], lab[6]), (lab[3], lab[2])]
    got = engine.extend(handle, rows, prefixes)
    for j, (r, p) in enumerate(zip(rows, prefixes)):
        np.testing.assert_allclose(got[j], _naive(engine, prompts[r] + list(p), lab), atol=1e-4)
    engine.release(handle)


def test_engine_calls_outside_its_contract_are_engine_call_errors(parts):
    """A prompt without the template's prefix, an empty extend and a prefix asked twice are the
    caller's bugs: an ``EngineCallError`` (a ``SoiError`` and ``ValueError``) that says which."""
    from soi_batch.errors import EngineCallError, SoiError

    _, encoder, engine, prompts = parts
    lab = list(encoder.label_token_ids)
    with pytest.raises(EngineCallError, match="every prompt must start with the shared template prefix"):
        engine.prefill([[lab[0]] + prompts[0]])
    handle, _ = engine.prefill(prompts[:2])
    with pytest.raises(EngineCallError, match="needs at least one branch"):
        engine.extend(handle, np.array([], dtype=np.int64), [])
    engine.extend(handle, np.array([0]), [(lab[8], lab[6])])
    with pytest.raises(EngineCallError, match="asked only for prefixes scored earlier") as caught:
        engine.extend(handle, np.array([0]), [(lab[8], lab[6])])
    assert isinstance(caught.value, (SoiError, ValueError))
    engine.release(handle)


def test_full_trie_probabilities_sum_to_one_and_parents_equal_children(parts):
    bundle, _, engine, prompts = parts
    trie = LabelTrie(bundle.taxonomy.labels)
    out = LabelScorer(engine, trie, ScorerConfig(beam=None)).score(prompts)
    label_p = np.exp(out.label_logp[:, trie.labels])
    np.testing.assert_allclose(label_p.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(out.unexplored < 1e-9)
    for node in ("6", "66", "662", "8", "86", "862", "9", "99"):
        i = trie.index[node]
        subtree = [trie.index[c] for c in bundle.taxonomy.labels if c.startswith(node)]
        np.testing.assert_allclose(np.exp(out.path_logp[:, i]), label_p[:, np.searchsorted(trie.labels, subtree)].sum(1),
                                   rtol=1e-9)
    np.testing.assert_allclose(np.exp(out.path_logp[:, trie.divisions]).sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.exp(out.path_logp[:, trie.major_groups]).sum(1), 1.0, atol=1e-9)


def test_parent_probability_is_product_of_renormalised_steps(parts):
    bundle, encoder, engine, prompts = parts
    trie = LabelTrie(bundle.taxonomy.labels)
    out = LabelScorer(engine, trie, ScorerConfig(beam=None)).score(prompts[:1])
    lab = list(encoder.label_token_ids)
    handle, root = engine.prefill(prompts[:1])
    s1 = engine.extend(handle, np.array([0]), [(lab[6],)])[0]
    root_allowed = [d for d in range(10) if trie.child[0, d] >= 0]
    p6 = np.exp(root[0][6]) / np.exp(root[0][root_allowed]).sum()
    node6 = trie.index["6"]
    allowed6 = [d for d in range(10) if trie.child[node6, d] >= 0]
    p66 = p6 * np.exp(s1[6]) / np.exp(s1[allowed6]).sum()
    assert np.exp(out.path_logp[0, trie.index["66"]]) == pytest.approx(p66, rel=1e-5)


def test_beam_keeps_exact_division_and_major_group_and_reports_unexplored(parts):
    bundle, _, engine, prompts = parts
    trie = LabelTrie(bundle.taxonomy.labels)
    full = LabelScorer(engine, trie, ScorerConfig(beam=None)).score(prompts)
    beam = LabelScorer(engine, trie, ScorerConfig(beam=2)).score(prompts)
    np.testing.assert_allclose(beam.path_logp[:, trie.major_groups], full.path_logp[:, trie.major_groups], rtol=1e-9)
    known = np.exp(beam.label_logp[:, trie.labels]).sum(1)
    np.testing.assert_allclose(known + beam.unexplored, 1.0, atol=1e-9)
    assert np.all(beam.unexplored >= -1e-12)
    np.testing.assert_array_equal(beam.division, full.division)
    np.testing.assert_array_equal(beam.major_group, full.major_group)


def test_temperature_flattens_distribution(parts):
    bundle, _, engine, prompts = parts
    trie = LabelTrie(bundle.taxonomy.labels)
    cold = LabelScorer(engine, trie, ScorerConfig(temperature=1.0)).score(prompts)
    hot = LabelScorer(engine, trie, ScorerConfig(temperature=4.0)).score(prompts)
    top_cold = np.exp(cold.path_logp[:, trie.divisions]).max(1)
    top_hot = np.exp(hot.path_logp[:, trie.divisions]).max(1)
    assert np.all(top_hot < top_cold)


def test_trie_shape_matches_oiics(parts):
    bundle = parts[0]
    trie = LabelTrie(bundle.taxonomy.labels)
    assert trie.divisions.size == 9 and trie.major_groups.size == 78
    assert trie.is_label[trie.index["9999"]] and not trie.is_label[trie.index["999"]]
    assert not trie.allowed[0, 10]  # the empty code is not a label
    assert trie.allowed[trie.index["66"], 10]  # a major group may be the answer
