"""One report's path: text → prompt ids (encoding) → engine + trie scorer → result columns.

:class:`Classifier` is the stage every front end wraps: the CLI, the Ray Data actors, the
Spark ``classify_df`` UDF and the nightly job all call :meth:`Classifier.classify_table` on
Arrow batches.  It has no Ray or Spark in it, so it runs and tests on a plain list of texts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa

from soi_batch.bundle import ModelBundle, load_bundle
from soi_batch.encoding import EncodedReport, PromptEncoder
from soi_batch.engines.base import EngineInputs
from soi_batch.engines.registry import EngineName, build_engine, engine_class, engine_names, engine_options
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.scorer import (
    LabelScorer,
    LabelTrie,
    PathSteps,
    ScoreBatch,
    ScorerConfig,
    check_beam,
    check_temperature,
)
from soi_batch.tables import append_results, kept_columns

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
TableLike = TypeVar("TableLike", pa.Table, "pd.DataFrame")
_MIN_MAJOR_GROUP_PROB = 1e-6
DEFAULT_MAX_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class ClassifierConfig:
    engine: EngineName = "auto"
    """"hf" (transformers, CPU or GPU), "vllm" (GPU), "auto": hf, which measured 2-3x faster than the
    vLLM engine on an H100 (bench/RESULTS.md); "vllm" stays available by name."""
    batch_size: int = 64
    """Reports per engine call (the HF engine pads within a batch; batches are length-sorted)."""
    top_k: int = 3
    """Codes kept in the ``top_k`` column, 1 to 50."""
    beam: int | None = 3
    """Major groups / groups expanded per report beyond the greedy path; None expands all."""
    temperature: float | None = None
    """Override the bundle's calibration temperature, > 0 (None: use the bundle's)."""
    device: str = "auto"
    max_prompt_tokens: int | None = None
    """Prompts longer than this are cut (narrative end) and flagged ``truncated``; ≥ 1 and longer
    than the prompt template (None: 512, or the engine's context if shorter)."""
    engine_options: dict[str, Any] = field(default_factory=dict)
    """Extra engine settings, e.g. {"quantization": "fp8"} for vLLM, {"num_threads": 2} for hf;
    checked and converted into :attr:`engine_config` when this config is built."""
    concurrent_batches: int | None = None
    """Engine batches in flight at once, from threads (engines whose class has
    ``supports_concurrent_batches``: hf). While one batch's results are turned into codes and
    the next batch is prepared on the CPU, the GPU runs the other one. None: the engine class's
    ``default_concurrent_batches`` (hf: 2 on a GPU, else 1)."""
    engine_config: Any = field(init=False, repr=False, compare=False)
    """The engine's typed options (``HFEngineConfig``, ``VLLMEngineConfig``), from ``engine``,
    ``device`` and ``engine_options`` (:func:`soi_batch.engines.registry.engine_options`)."""

    def __post_init__(self) -> None:
        engine = engine_class(self.engine)  # ConfigError for an unknown engine
        if not _is_whole(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number ≥ 1, got {self.batch_size!r}")
        if not _is_whole(self.top_k) or not 1 <= self.top_k <= 50:
            raise ConfigError(f"top_k must be a whole number between 1 and 50, got {self.top_k!r}")
        check_beam(self.beam)
        check_temperature(self.temperature, none_means="the bundle's calibrated temperature")
        if self.max_prompt_tokens is not None and (not _is_whole(self.max_prompt_tokens) or self.max_prompt_tokens < 1):
            raise ConfigError(f"max_prompt_tokens must be a whole number ≥ 1 (and longer than the prompt template), "
                              f"or None for {DEFAULT_MAX_PROMPT_TOKENS}; got {self.max_prompt_tokens!r}")
        if self.concurrent_batches is not None and self.concurrent_batches < 1:
            raise ConfigError(f"concurrent_batches must be ≥ 1 or None, got {self.concurrent_batches}")
        if self.concurrent_batches is not None and self.concurrent_batches > 1 and not engine.supports_concurrent_batches:
            threaded = [name for name in engine_names() if engine_class(name).supports_concurrent_batches]
            raise ConfigError(f"concurrent_batches > 1 needs the {' or '.join(threaded)} engine; "
                              f"{self.engine} schedules its own batches: leave concurrent_batches unset")
        object.__setattr__(self, "engine_config", engine_options(self.engine, self.engine_options, device=self.device))


def _dataframe_texts(frame: object, text_col: str) -> list[object]:
    """The texts of a pandas DataFrame's ``text_col``, missing values (NaN, None, NA) as None."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise InputSchemaError(f"classify_table takes a pyarrow.Table or a pandas.DataFrame, got "
                               f"{type(frame).__module__}.{type(frame).__name__}")
    if text_col not in frame.columns:
        raise InputSchemaError(f"text column {text_col!r} not found; columns are {list(frame.columns)}")
    column = frame[text_col]
    if isinstance(column, pd.DataFrame):
        raise InputSchemaError(f"text column {text_col!r} appears {column.shape[1]} times in the DataFrame; "
                               "rename or drop the duplicates")
    return [None if not isinstance(t, str) and pd.api.types.is_scalar(t) and pd.isna(t) else t for t in column]


def _is_whole(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class RankedCode(NamedTuple):
    """One entry of :attr:`Prediction.top_k`: the fields of the ``top_k`` column's struct."""

    code: str
    title: str | None
    prob: float


@dataclass(frozen=True)
class Prediction:
    code: str | None
    title: str | None
    confidence: float | None
    division_code: str | None
    division_confidence: float | None
    major_group_code: str | None
    major_group_confidence: float | None
    top_k: list[RankedCode]
    """The most probable labels, descending: ``(code, title, prob)`` like the ``top_k`` column."""
    division_probs: dict[str, float]
    major_group_probs: dict[str, float]
    needs_review: bool | None
    truncated: bool
    error: str | None


class Classifier:
    """A loaded model bundle + engine; classifies texts or Arrow tables."""

    def __init__(self, bundle: ModelBundle, config: ClassifierConfig = ClassifierConfig()) -> None:
        self.bundle = bundle
        self.config = config
        self.taxonomy = bundle.taxonomy
        limit = DEFAULT_MAX_PROMPT_TOKENS if config.max_prompt_tokens is None else config.max_prompt_tokens
        self.encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=limit)
        self.trie = LabelTrie(self.taxonomy.labels)
        inputs = EngineInputs(bundle, tuple(self.encoder.shared_prefix_ids), self.encoder.label_token_ids,
                              self.trie.first_digits)
        self.engine = build_engine(config.engine, inputs, config.engine_config)
        self.encoder.max_prompt_tokens = min(limit, self.engine.max_prompt_tokens)
        temperature = bundle.calibration.temperature if config.temperature is None else config.temperature
        self.scorer = LabelScorer(self.engine, self.trie, ScorerConfig(beam=config.beam, temperature=temperature))
        self.concurrent_batches = (self.engine.default_concurrent_batches(self.engine.device_type)
                                   if config.concurrent_batches is None else config.concurrent_batches)
        self._node_titles = [self.taxonomy.titles.get(p) for p in self.trie.nodes]
        log.info("classifier ready: %s, engine %s, temperature %.3f, review threshold %.3f (%s)",
                 bundle.model_id, self.engine.name, temperature, bundle.calibration.review_threshold,
                 bundle.calibration.review_level)

    @classmethod
    def load(cls, model: str | Path | None = None, config: ClassifierConfig = ClassifierConfig(), *,
             cache_dir: Path | None = None) -> Classifier:
        """Load a bundle and its engine: a named model ("soi-small", "soi-mini"; None: the default),
        a bundle directory, or a hub id.  ``cache_dir``: where soi-small is built on first use
        (default ``~/.cache/soi-batch``)."""
        return cls(load_bundle(model, cache_dir), config)

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    # --- scoring -------------------------------------------------------------------------
    def _score_encoded(self, encoded: Sequence[EncodedReport]) -> tuple[list[int], ScoreBatch | None, list[str | None]]:
        """Score the rows that have ids, in length-sorted batches; returns (rows, scores, errors)."""
        errors = [e.error for e in encoded]
        rows = [i for i, e in enumerate(encoded) if e.ids is not None]
        rows.sort(key=lambda i: len(encoded[i].ids or ()))
        chunks = [rows[start: start + self.config.batch_size] for start in range(0, len(rows), self.config.batch_size)]

        def score_chunk(chunk: list[int]) -> list[tuple[list[int], ScoreBatch]]:
            try:
                return [(chunk, self.scorer.score([encoded[i].ids for i in chunk]))]
            except Exception as exc:  # noqa: BLE001 - isolate the failing row(s); never lose the batch
                log.warning("batch of %d failed (%s); scoring its rows one by one", len(chunk), exc)
                out = []
                for i in chunk:
                    try:
                        out.append(([i], self.scorer.score([encoded[i].ids])))
                    except Exception as row_exc:  # noqa: BLE001 - reported per row
                        errors[i] = f"scoring failed: {type(row_exc).__name__}: {row_exc}"
                return out

        if self.concurrent_batches > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.concurrent_batches, thread_name_prefix="soi-batch") as pool:
                parts = [part for done in pool.map(score_chunk, chunks) for part in done]
        else:
            parts = [part for chunk in chunks for part in score_chunk(chunk)]
        scored_rows = [i for chunk, _ in parts for i in chunk]
        if not parts:
            return [], None, errors
        merged = ScoreBatch(
            self.trie,
            np.concatenate([b.path_logp for _, b in parts]),
            np.concatenate([b.label_logp for _, b in parts]),
            np.concatenate([b.division for _, b in parts]),
            np.concatenate([b.major_group for _, b in parts]),
            np.concatenate([b.code for _, b in parts]),
        )
        return scored_rows, merged, errors

    def classify_texts(self, texts: Sequence[object]) -> list[Prediction]:
        column = pa.array([t if isinstance(t, str) else None for t in texts], type=pa.string())
        table = self.classify_table(pa.table({"text": column}), text_col="text", keep_probabilities=True)
        out = []
        for row in table.to_pylist():
            out.append(Prediction(
                code=row["source_code"], title=row["source_title"], confidence=row["confidence"],
                division_code=row["division_code"], division_confidence=row["division_confidence"],
                major_group_code=row["major_group_code"], major_group_confidence=row["major_group_confidence"],
                top_k=[RankedCode(t["code"], t["title"], t["prob"]) for t in row["top_k"] or []],
                division_probs=dict(row["division_probs"] or []),
                major_group_probs=dict(row["major_group_probs"] or []),
                needs_review=row["needs_review"], truncated=bool(row["truncated"]), error=row["error"],
            ))
        return out

    def classify_table(self, table: TableLike, *, text_col: str, run_id: str | None = None,
                       keep_probabilities: bool = False) -> TableLike:
        """``table`` with the result columns of :data:`soi_batch.schema.RESULT_SCHEMA` appended.

        ``table``: a ``pyarrow.Table`` or a ``pandas.DataFrame``; the same kind comes back.  A
        DataFrame keeps its index and its other columns as they are; the result columns come
        from the Arrow ones by ``to_pandas()`` (``top_k``: lists of dicts, ``classified_at``:
        datetime64 UTC).  A column named like a result column is replaced (moved last).
        """
        if isinstance(table, pa.Table):
            columns = list(table.column_names)
            if text_col not in columns:
                raise InputSchemaError(f"text column {text_col!r} not found; columns are {columns}")
            texts = table.column(text_col).to_pylist()
        else:
            texts = _dataframe_texts(table, text_col)
        encoded = self.encoder.encode(texts)
        rows, scores, errors = self._score_encoded(encoded)
        results = self._result_columns(len(texts), rows, scores, errors, encoded, run_id or uuid.uuid4().hex,
                                       keep_probabilities)
        if isinstance(table, pa.Table):
            return append_results(table, results)
        import pandas as pd

        frame = pa.table(results).to_pandas().set_axis(table.index)
        kept = table.iloc[:, kept_columns([str(c) for c in table.columns], list(results))]
        return pd.concat([kept, frame], axis=1)

    def code_probabilities(self, texts: Sequence[object]) -> list[dict[str, float] | None]:
        """Each text's probability for every label code the search reached, most probable first.

        One dict per text (code → calibrated probability; None where the text could not be
        scored: null, blank, or a scoring error, which :meth:`classify_texts` reports).  With
        ``ClassifierConfig(beam=None)`` the whole trie is expanded: every label gets its exact
        probability and the values sum to 1 (slower: every group is scored).  With a beam (default
        3) only labels under the expanded major groups and groups appear; each listed value is
        still exact (the same as with ``beam=None``), but labels outside the beam are missing
        rather than zero-probability, and ``1 - sum(values)`` is their total mass.
        """
        encoded = self.encoder.encode(list(texts))
        rows, scores, _ = self._score_encoded(encoded)
        out: list[dict[str, float] | None] = [None] * len(encoded)
        if scores is None:
            return out
        labels = self.trie.labels
        label_p = np.exp(scores.label_logp[:, labels])
        for j, i in enumerate(rows):
            reached = np.flatnonzero(label_p[j] > 0)
            order = reached[np.argsort(-label_p[j, reached], kind="stable")]
            out[i] = {self.trie.nodes[labels[t]]: float(label_p[j, t]) for t in order}
        return out

    def path_steps(self, texts: Sequence[str], codes: Sequence[str]) -> list[PathSteps]:
        """The engine's scores along each text's true code path (for temperature fitting)."""
        encoded = self.encoder.encode(texts)
        bad = [i for i, e in enumerate(encoded) if e.ids is None]
        if bad:
            raise InputSchemaError(f"rows {bad[:5]} have no usable text; drop them before calibration")
        out: list[PathSteps] = []
        for start in range(0, len(texts), self.config.batch_size):
            chunk = range(start, min(start + self.config.batch_size, len(texts)))
            out += self.scorer.path_steps([encoded[i].ids for i in chunk], [codes[i] for i in chunk])
        return out

    # --- result columns --------------------------------------------------------------------
    def _result_columns(self, n: int, rows: list[int], scores: ScoreBatch | None, errors: list[str | None],
                        encoded: Sequence[EncodedReport], run_id: str,
                        keep_probabilities: bool) -> dict[str, pa.Array]:
        trie, nodes, titles = self.trie, self.trie.nodes, self._node_titles
        cols: dict[str, list[Any]] = {name: [None] * n for name in RESULT_SCHEMA.names}
        probs: dict[str, list[Any]] = {name: [None] * n for name in PROBABILITIES_SCHEMA.names}
        cal = self.bundle.calibration
        if scores is not None:
            r = np.arange(len(rows))
            div_p = np.exp(scores.path_logp[r, scores.division])
            mg_p = np.exp(scores.path_logp[r, scores.major_group])
            code_p = np.exp(scores.label_logp[r, scores.code])
            review_p = {"division": div_p, "major_group": mg_p}.get(cal.review_level, code_p)
            label_p = np.exp(scores.label_logp[:, trie.labels])
            k = min(self.config.top_k, trie.labels.size)
            top = np.argsort(-label_p, axis=1)[:, :k]
            div_all = np.exp(scores.path_logp[:, trie.divisions])
            mg_all = np.exp(scores.path_logp[:, trie.major_groups])
            for j, i in enumerate(rows):
                c, d, m = scores.code[j], scores.division[j], scores.major_group[j]
                cols["source_code"][i], cols["source_title"][i] = nodes[c], titles[c]
                cols["confidence"][i] = float(code_p[j])
                cols["division_code"][i], cols["division_title"][i] = nodes[d], titles[d]
                cols["division_confidence"][i] = float(div_p[j])
                cols["major_group_code"][i], cols["major_group_title"][i] = nodes[m], titles[m]
                cols["major_group_confidence"][i] = float(mg_p[j])
                cols["top_k"][i] = [
                    {"code": nodes[trie.labels[t]], "title": titles[trie.labels[t]], "prob": float(label_p[j, t])}
                    for t in top[j] if label_p[j, t] > 0
                ]
                cols["needs_review"][i] = bool(review_p[j] < cal.review_threshold)
                if keep_probabilities:
                    probs["division_probs"][i] = [(nodes[x], float(p)) for x, p in zip(trie.divisions, div_all[j])]
                    probs["major_group_probs"][i] = [
                        (nodes[x], float(p)) for x, p in zip(trie.major_groups, mg_all[j]) if p >= _MIN_MAJOR_GROUP_PROB
                    ]
        now = datetime.now(UTC)
        cols["truncated"] = [e.truncated for e in encoded]
        cols["error"] = errors
        cols["model_id"] = [self.model_id] * n
        cols["run_id"] = [run_id] * n
        cols["classified_at"] = [now] * n
        out = {f.name: pa.array(cols[f.name], type=f.type) for f in RESULT_SCHEMA}
        if keep_probabilities:
            out.update({f.name: pa.array(probs[f.name], type=f.type) for f in PROBABILITIES_SCHEMA})
        return out
