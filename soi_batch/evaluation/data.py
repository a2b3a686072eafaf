"""The labelled reports an evaluation runs on: a CSV/Parquet/Delta file, or the bundled OSHA split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from soi_batch.datasets.osha import load_split
from soi_batch.errors import InputSchemaError
from soi_batch.evaluation.config import OSHA_SIR, EvaluationConfig
from soi_batch.tables import inspect_input, read_table

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """Texts and their labels (rows without a valid label already dropped), with provenance."""

    texts: list[object]
    labels: list[str]
    description: str
    details: dict[str, Any]


def load_osha_split() -> tuple[dict[str, Any], str]:
    """The bundled time-based OSHA split (:func:`soi_batch.datasets.osha.load_split`) and its fingerprint."""
    return load_split()


def clean_label(value: object) -> str | None:
    """A label as a 1–4 digit string, or None when it is missing or not an OIICS code."""
    if not isinstance(value, str):
        return None
    code = value.strip()
    return code if code.isdigit() and 1 <= len(code) <= 4 else None


def load_eval_data(config: EvaluationConfig) -> EvalData:
    """The texts and labels to evaluate, with rows lacking a valid label dropped (and counted)."""
    details: dict[str, Any] = {"source": config.data, "text_col": config.text_col, "label_col": config.label_col}
    if config.data == OSHA_SIR:
        parts, fingerprint = load_osha_split()
        names = ["train", "validation", "test"] if config.split == "all" else [config.split]
        frame = pd.concat([parts[n] for n in names], ignore_index=True)
        texts, raw = frame[config.text_col].tolist(), frame[config.label_col].tolist()
        details.update(split=config.split, split_fingerprint=fingerprint)
        description = f"bundled OSHA SIR 2015-2016, {config.split} part"
    else:
        spec = inspect_input(config.data, fmt=config.input_format, encoding=config.encoding)
        spec.require(config.text_col, role="text column")
        if config.label_col not in spec.columns:
            raise InputSchemaError(
                f"{config.data}: label column {config.label_col!r} not found; available columns: "
                f"{spec.columns}. Pass the right name with --label-col."
            )
        table = read_table(spec).select([config.text_col, config.label_col])
        texts, raw = table.column(config.text_col).to_pylist(), table.column(config.label_col).to_pylist()
        raw = [None if v is None else str(v) for v in raw]
        details.update(split="all rows", format=spec.format, encoding=spec.encoding)
        description = f"{config.data} ({spec.format}), all rows"
    labels = [clean_label(v) for v in raw]
    keep = [i for i, code in enumerate(labels) if code is not None]
    details["rows_read"] = len(labels)
    details["rows_without_valid_label"] = len(labels) - len(keep)
    if len(keep) < len(labels):
        log.warning("%d of %d rows have no 1-4 digit label in %r and are not evaluated",
                    len(labels) - len(keep), len(labels), config.label_col)
    if config.limit is not None and config.limit < len(keep):
        rng = np.random.default_rng(config.seed)
        keep = sorted(rng.choice(keep, size=config.limit, replace=False).tolist())
        description += f", seeded sample of {config.limit} (seed {config.seed})"
    details.update(limit=config.limit, seed=config.seed)
    if not keep:
        raise InputSchemaError(f"{config.data}: no rows with a valid label in column {config.label_col!r}")
    return EvalData([texts[i] for i in keep], [labels[i] for i in keep], description,  # type: ignore[misc]
                    details)
