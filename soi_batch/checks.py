"""Checks that run before any row is classified (Ray Data entry point; CLI outputs)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from soi_batch.bundle import is_hub_id, load_bundle
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.tables import OUTPUT_FORMATS, is_delta_table, is_text_type


def model_for_workers(model: str | Path | None, cache_dir: Path | None = None) -> str:
    """Validate the bundle on the driver (manifest and file headers, no weights) and name it for workers.

    A named model (None: the default) is built into ``cache_dir`` here, once, and passed as its
    directory, like a local directory (absolute); a hub id stays a hub id, so each worker fetches it
    into its own cache.  Raises :class:`~soi_batch.errors.BundleError` naming the bundle.
    """
    bundle = load_bundle(model, cache_dir)
    return str(model) if is_hub_id(model) else str(bundle.path)


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


@dataclass(frozen=True)
class OutputTarget:
    """Where `soi-batch classify` writes, decided (and checked) before any row is classified."""

    path: Path
    """The output, absolute."""
    fmt: str
    replace: bool
    """An earlier output exists and ``--overwrite`` was given."""

    @property
    def delta_in_place(self) -> bool:
        """An existing Delta table overwritten by a new table version (its history kept)."""
        return self.replace and self.fmt == "delta" and is_delta_table(self.path)

    @contextmanager
    def write(self) -> Iterator[tuple[Path, Literal["append", "overwrite"]]]:
        """Yield where to write and the Delta mode; nothing existing is deleted before the new result is written.

        A new output is written in place, and removed if the write fails.  An existing Delta table (Delta output) gets a new version
        written in mode ``overwrite``: the old files stay, referenced by the older versions, until
        ``vacuum()``.  Any other earlier output is replaced only once the new one is complete: it is
        written next to it (``.NAME.soi-new-*``), then the two are swapped by renames.  If the write
        fails, the partial new output is removed and the earlier one is left as it was.
        """
        if not self.replace:
            try:
                yield self.path, "append"
            except BaseException:
                _remove(self.path)  # a new output that failed: nothing half-written may block the re-run
                raise
            return
        if self.delta_in_place:
            yield self.path, "overwrite"
            return
        tag = uuid.uuid4().hex[:8]
        new = self.path.with_name(f".{self.path.name}.soi-new-{tag}")
        old = self.path.with_name(f".{self.path.name}.soi-old-{tag}")
        try:
            yield new, "append"
            new.mkdir(exist_ok=True)  # the writer made it, unless it wrote nothing
        except BaseException:
            _remove(new)
            raise
        self.path.rename(old)
        try:
            new.rename(self.path)
        except BaseException:
            old.rename(self.path)
            _remove(new)
            raise
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_output(output: str | Path, *, fmt: str, overwrite: bool, input_path: str | Path | None = None
                 ) -> OutputTarget:
    """The output, checked before any row is classified (paths resolved: relative, ``..``, symlinks).

    Raises :class:`ConfigError` for an unknown format; an output that is the input, contains it or
    is inside it (``--overwrite`` would delete the input, or the output would land inside an input
    table); an existing output without ``overwrite``, or, with it, one that is not an earlier
    output (a Delta table or a folder of Parquet files); a parent that is not a directory or not
    writable (tried by creating a directory there).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    out = Path(output).expanduser().resolve()
    if input_path is not None:
        _check_not_input(output, out, input_path)
    exists = out.exists() or out.is_symlink()
    if exists and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite or choose another output")
    if exists:
        _check_replaceable(output, out)
    target = OutputTarget(out, fmt, replace=exists)
    _check_writable(out if target.delta_in_place else out.parent, out)
    return target


def _check_not_input(output: str | Path, out: Path, input_path: str | Path) -> None:
    source = Path(input_path).expanduser().resolve()
    if out == source or (out.exists() and source.exists() and os.path.samefile(out, source)):
        raise ConfigError(f"OUTPUT {output} is the input {input_path} ({source}); choose another OUTPUT")
    if source.is_relative_to(out):
        raise ConfigError(
            f"OUTPUT {output} contains the input {input_path} ({source}); --overwrite would delete it. "
            "Choose an OUTPUT that is not a folder above the input"
        )
    if out.is_relative_to(source):
        raise ConfigError(
            f"OUTPUT {output} is inside the input {input_path} ({source}); the results would be written "
            "into the input. Choose an OUTPUT outside it"
        )


def _check_replaceable(output: str | Path, out: Path) -> None:
    """--overwrite replaces only an earlier output: a Delta table, a folder of Parquet files, a Parquet file."""
    if is_delta_table(out) or (out.is_file() and out.name.endswith(".parquet")):
        return
    if out.is_dir():
        others = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                        if not p.is_dir() and not p.name.endswith(".parquet") and not p.name.startswith(("_", ".")))
        if not others:
            return
        held = f"it holds {others[:3]}{' …' if len(others) > 3 else ''}"
    else:
        held = "it is a file"
    raise ConfigError(
        f"{output} exists and is not a Parquet output or a Delta table ({held}); --overwrite replaces only "
        "an earlier output. Choose another OUTPUT, or move that folder away yourself"
    )
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
