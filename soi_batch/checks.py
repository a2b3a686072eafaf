"""Checks that run before any row is classified (Ray Data entry point; CLI outputs)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from soi_batch.bundle import load_bundle
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.io import OUTPUT_FORMATS, is_text_type


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


def check_output(output: str | Path, *, fmt: str, overwrite: bool) -> Path:
    """The output as an absolute path, checked before any row is classified.

    Raises :class:`ConfigError` for an unknown format, an existing output without ``overwrite``,
    and a parent that is not a directory or not writable (tried by creating a directory there).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    out = Path(output).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite or choose another output")
    _check_writable(out.parent, out)
    return out


def _check_writable(directory: Path, out: Path) -> None:
    """Raise :class:`ConfigError` unless a directory can be created in ``directory`` (or its nearest existing ancestor)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise ConfigError(f"cannot write the output {out}: {directory} is not a directory; choose another OUTPUT")
    try:
        Path(tempfile.mkdtemp(prefix=".soi-write-check-", dir=directory)).rmdir()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the output {out}: {directory} is not writable ({exc.strerror}); choose another "
            "OUTPUT or fix the permissions"
        ) from exc
