"""The Python API as a notebook user calls it: pandas in and out, titled top_k, the full code distribution.

Real OSHA rows and the shipped soi-mini."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from soi_batch.classifier import Classifier, ClassifierConfig, RankedCode
from soi_batch.errors import InputSchemaError
from soi_batch.schema import RESULT_SCHEMA

TEXT = "Final Narrative"


@pytest.fixture(scope="module")
def mini() -> Classifier:
    return Classifier.load("soi-mini")


@pytest.fixture(scope="module")
def rows(osha: pd.DataFrame) -> pd.DataFrame:
    """12 real reports with a non-default index, a missing and a blank text, and an int column."""
    frame = osha[["ID", "EventDate", TEXT]].iloc[100:112].copy()
    frame.index = pd.Index([f"r{i}" for i in range(len(frame))], name="key")
    frame.loc["r3", TEXT] = np.nan
    frame.loc["r7", TEXT] = "   "
    frame["n"] = range(len(frame))
    return frame


def test_classify_table_takes_a_dataframe_and_returns_one_like_the_arrow_path(mini: Classifier,
                                                                              rows: pd.DataFrame) -> None:
    out = mini.classify_table(rows, text_col=TEXT, run_id="r")
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(rows.index)
    assert list(out.columns) == [*rows.columns, *RESULT_SCHEMA.names]
    pd.testing.assert_frame_equal(out[rows.columns], rows)  # the input's columns untouched (dtypes too)
    arrow = mini.classify_table(pa.Table.from_pandas(rows, preserve_index=False).set_column(
        2, TEXT, pa.array([t if isinstance(t, str) else None for t in rows[TEXT]])), text_col=TEXT, run_id="r")
    assert out["source_code"].tolist() == arrow.column("source_code").to_pylist()
    assert out["confidence"].tolist() == pytest.approx(arrow.column("confidence").to_pandas().tolist(), nan_ok=True)
    assert out.loc["r3", "error"] == "text is null" and out.loc["r7", "error"] == "text is empty"
    assert out["error"].isna().sum() == len(rows) - 2
    assert out.loc["r0", "top_k"][0]["title"]


def test_classify_table_refuses_what_it_cannot_read(mini: Classifier, rows: pd.DataFrame) -> None:
    with pytest.raises(InputSchemaError, match="text column 'Narrative' not found"):
        mini.classify_table(rows, text_col="Narrative")
    with pytest.raises(InputSchemaError, match="pyarrow.Table or a pandas.DataFrame, got builtins.list"):
        mini.classify_table([["a"]], text_col=TEXT)  # type: ignore[type-var]


def test_prediction_top_k_has_the_titles_of_the_top_k_column(mini: Classifier, rows: pd.DataFrame) -> None:
    texts = rows[TEXT].dropna().tolist()[:4]
    preds = mini.classify_texts(texts)
    table = mini.classify_table(pa.table({TEXT: texts}), text_col=TEXT)
    for pred, column in zip(preds, table.column("top_k").to_pylist()):
        assert all(isinstance(t, RankedCode) for t in pred.top_k)
        assert [t._asdict() for t in pred.top_k] == column
        assert pred.top_k[0].title == mini.taxonomy.titles[pred.top_k[0].code]


def test_code_probabilities_full_distribution_and_what_the_beam_leaves_out(osha: pd.DataFrame,
                                                                           mini: Classifier) -> None:
    texts = osha[TEXT].iloc[200:206].tolist() + [None]
    exact = Classifier.load("soi-mini", ClassifierConfig(beam=None))
    full = exact.code_probabilities(texts)
    beamed = mini.code_probabilities(texts)
    preds = exact.classify_texts(texts)
    assert full[-1] is None and beamed[-1] is None
    for dist, small, pred in zip(full[:-1], beamed[:-1], preds[:-1]):
        assert len(dist) == len(exact.taxonomy.labels)  # every label: the whole trie was expanded
        assert sum(dist.values()) == pytest.approx(1.0, abs=1e-4)
        for division, p in pred.division_probs.items():  # a division's mass is its codes' sum
            assert sum(v for c, v in dist.items() if c.startswith(division)) == pytest.approx(p, abs=1e-4)
        assert list(dist)[:len(pred.top_k)] == [t.code for t in pred.top_k]
        assert 0 < len(small) < len(dist) and sum(small.values()) <= 1 + 1e-6
        assert small == pytest.approx({c: dist[c] for c in small}, abs=1e-5)  # listed values are exact
