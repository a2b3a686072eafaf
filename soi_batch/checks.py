"""Checks that run before any row is classified (Ray Data entry point; CLI outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from soi_batch.bundle import load_bundle
from soi_batch.errors import InputSchemaError
from soi_batch.io import is_text_type


def model_for_workers(model: str | Path | None) -> str | None:
    """Validate the bundle on the driver (manifest and file headers, no weights) and name it for workers.

    A local directory becomes an absolute path; a hub id stays a hub id; None (the embedded
    soi-mini) stays None.  Raises :class:`~soi_batch.errors.BundleError` naming the bundle.
    """
    load_bundle(model)
    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def require_dataset_text(ds: Any, text_col: str) -> None:
    """Raise :class:`InputSchemaError` unless the Ray Dataset ``ds`` has a string column ``text_col``.

    The schema comes from the plan or the datasource's metadata; when neither knows it (e.g. CSV),
    Ray reads the first block only.  An empty dataset without a schema passes.
    """
    schema = ds.schema()
    if schema is None:
        return
    names = list(schema.names)
    if text_col not in names:
        raise InputSchemaError(
            f"Ray Dataset: text column {text_col!r} not found; available columns: {names}. "
            "Pass the right name with text_col=..."
        )
    kind = schema.types[names.index(text_col)]
    if isinstance(kind, pa.DataType) and not is_text_type(kind):
        raise InputSchemaError(
            f"Ray Dataset: text column {text_col!r} has type {kind}, not string; the narratives must be text. "
            f"Cast the column to string first, or pass the narrative column with text_col=..."
        )
