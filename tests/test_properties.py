"""Property-based tests (hypothesis) over reader → classifier/scorer → writer with soi-mini."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.prompt import normalize_narrative
from soi_batch.taxonomy import load_taxonomy

LABELS = set(load_taxonomy().labels)
TEXT = "Final Narrative"


@pytest.fixture(scope="module")
def soi_mini() -> Classifier:
    return Classifier.load(None, ClassifierConfig(engine="hf", batch_size=8, top_k=4,
                                                  engine_options={"num_threads": 2}))


texts = st.lists(st.one_of(st.none(), st.text(max_size=300)), max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=texts)
def test_any_batch_round_trips(soi_mini, batch):
    n = len(batch)
    table = pa.table({"idx": pa.array(range(n), pa.int64()), TEXT: pa.array(batch, pa.string())})
    out = soi_mini.classify_table(table, text_col=TEXT, run_id="prop", keep_probabilities=True)
    assert out.num_rows == n
    assert out.column("idx").to_pylist() == list(range(n))  # order preserved
    assert out.column(TEXT).to_pylist() == batch
    for text, row in zip(batch, out.to_pylist()):
        if row["error"] is not None:
            assert row["source_code"] is None and row["top_k"] is None
            assert text is None or not text.strip() or row["error"].startswith("text is")
            continue
        code = row["source_code"]
        assert code in LABELS
        assert code.startswith(row["major_group_code"]) and row["major_group_code"].startswith(row["division_code"])
        divs = dict(row["division_probs"])
        assert len(divs) == 9 and abs(sum(divs.values()) - 1) < 1e-6
        assert divs[row["division_code"]] == pytest.approx(row["division_confidence"], rel=1e-9)
        probs = [t["prob"] for t in row["top_k"]]
        assert probs == sorted(probs, reverse=True) and all(t["code"] in LABELS for t in row["top_k"])
        assert 0 <= row["confidence"] <= row["major_group_confidence"] + 1e-12 <= row["division_confidence"] + 2e-12
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.parquet"
        pq.write_table(out, path)
        back = pq.read_table(path)
    assert back.schema.equals(out.schema, check_metadata=False)
    assert back.to_pylist() == out.to_pylist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=3000))
def test_encoder_never_exceeds_the_window(soi_mini, text):
    (enc,) = soi_mini.encoder.encode([text])
    if enc.ids is None:
        assert enc.error == "text is empty"
    else:
        assert len(enc.ids) <= soi_mini.encoder.max_prompt_tokens
        assert enc.ids[-len(soi_mini.encoder.suffix_ids):] == soi_mini.encoder.suffix_ids
        _, cut = normalize_narrative(text, soi_mini.bundle.prompt.max_input_chars)
        assert enc.truncated or not cut  # a character cut is always flagged
