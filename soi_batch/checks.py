"""Checks that run before any row is classified (Ray Data entry point; CLI outputs, local or remote)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from soi_batch.bundle import ModelBundle, is_hub_id, load_bundle
from soi_batch.encoding import PromptEncoder
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.storage import StorageOptions, arrow_filesystem, is_uri, local_path
from soi_batch.tables import OUTPUT_FORMATS, WRITE_MODES, WriteMode, is_delta_table, is_text_type


def model_for_workers(model: str | Path | ModelBundle | None, cache_dir: Path | None = None) -> str:
    """Validate the bundle on the driver and name it for workers.

    :func:`~soi_batch.bundle.load_bundle`'s checks (files, manifest, prompt, tensor names and
    shapes from the headers; no weights; skipped for a :class:`~soi_batch.bundle.ModelBundle`,
    which ``load_bundle`` made), then the tokenizer is loaded once to check the label contract
    (one token per digit, an EOS token), so no worker fails on it later.
    A named model (None: the default) is built into ``cache_dir`` here, once, and passed as its
    directory, like a local directory (absolute); a hub id stays a hub id, so each worker fetches it
    into its own cache.  Raises :class:`~soi_batch.errors.BundleError` or
    :class:`~soi_batch.errors.TokenizerError` naming the bundle.
    """
    if isinstance(model, ModelBundle):
        bundle, reference = model, str(model.path)
    else:
        bundle = load_bundle(model, cache_dir)
        reference = str(model) if is_hub_id(model) else str(bundle.path)
    PromptEncoder.check_tokenizer(bundle)
    return reference


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

    path: str
    """The output: a local path made absolute, or a URI (``s3://…``) as given."""
    fmt: str
    replace: bool
    """An earlier output exists and is to be overwritten (``--overwrite`` / ``--mode overwrite``)."""
    mode: WriteMode = "error"
    """The write mode asked for: ``error`` (the output must not exist), ``append`` or ``overwrite``."""
    storage_options: dict[str, str] | None = field(default=None, repr=False)
    """How to reach a remote output (:mod:`soi_batch.storage`)."""

    @property
    def remote(self) -> bool:
        return is_uri(self.path)

    @property
    def delta_in_place(self) -> bool:
        """An existing Delta table overwritten by a new table version (its history kept)."""
        return self.replace and self.fmt == "delta" and is_delta_table(self.path, self.storage_options)

    @contextmanager
    def write(self) -> Iterator[tuple[str, WriteMode]]:
        """Yield where to write and the mode to write in; locally, nothing existing is deleted before the new
        result is written.

        A new local output is written in place, and removed if the write fails; ``append`` adds to an
        existing one (kept as it was if the write fails, apart from what was committed).  An existing Delta table
        overwritten gets a new version written in mode ``overwrite``: the old files stay, referenced by
        the older versions, until ``vacuum()``.  Any other earlier local output is replaced only once the
        new one is complete: it is written next to it (``.NAME.soi-new-*``), then the two are swapped by
        renames.  If the write fails, the partial new output is removed and the earlier one is left as
        it was.  An object store has no renames: a remote Parquet output is overwritten in place (its
        files deleted, then the new ones written).
        """
        if not self.replace:
            fresh = not self.remote and not Path(self.path).exists()  # appending to an earlier output keeps it
            try:
                yield self.path, "append"
            except BaseException:
                if fresh:
                    _remove(Path(self.path))  # a new output that failed: nothing half-written may block the re-run
                raise
            return
        if self.delta_in_place or self.remote:
            yield self.path, "overwrite"
            return
        here = Path(self.path)
        tag = uuid.uuid4().hex[:8]
        new = here.with_name(f".{here.name}.soi-new-{tag}")
        old = here.with_name(f".{here.name}.soi-old-{tag}")
        try:
            yield str(new), "append"
            new.mkdir(exist_ok=True)  # the writer made it, unless it wrote nothing
        except BaseException:
            _remove(new)
            raise
        here.rename(old)
        try:
            new.rename(here)
        except BaseException:
            old.rename(here)
            _remove(new)
            raise
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_mode(overwrite: bool, mode: str | None) -> WriteMode:
    """The write mode from ``--overwrite`` and ``--mode`` (default ``error``); ConfigError if they disagree."""
    if mode is not None and mode not in WRITE_MODES:
        raise ConfigError(f"write mode {mode!r} is not one of {list(WRITE_MODES)}")
    if overwrite and mode not in (None, "overwrite"):
        raise ConfigError(f"--overwrite and --mode {mode} disagree; pass one of them")
    return "overwrite" if overwrite else (mode or "error")  # type: ignore[return-value]


def check_output(output: str | Path, *, fmt: str, overwrite: bool = False, input_path: str | Path | None = None,
                 mode: str | None = None, storage_options: StorageOptions | None = None) -> OutputTarget:
    """The output, checked before any row is classified (local paths resolved: relative, ``..``, symlinks).

    ``output``: a local path or a URI (``s3://bucket/results``, reached with ``storage_options``).
    ``mode``: ``error`` (default; ``overwrite=True`` means ``overwrite``), ``append`` or ``overwrite``.
    Raises :class:`ConfigError` for an unknown format or mode; an output that is the input, contains
    it or is inside it (``--overwrite`` would delete the input, or the output would land inside an
    input table); an existing output in mode ``error``, or, in the other modes, one that is not an
    earlier output (a Delta table or a folder of Parquet files; appending needs the same format); a
    local parent that is not a directory or not writable (tried by creating a directory there); a
    remote output whose bucket does not exist or cannot be reached with these credentials (a write
    is not tried there: deleting a probe object leaves a folder marker behind on S3).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    how = write_mode(overwrite, mode)
    options = dict(storage_options) if storage_options else None
    if is_uri(output):
        return _check_remote_output(str(output), fmt=fmt, mode=how, input_path=input_path, storage_options=options)
    out = Path(local_path(output)).expanduser().resolve()
    if input_path is not None and not is_uri(input_path):
        _check_not_input(output, out, input_path)
    exists = out.exists() or out.is_symlink()
    if exists and how == "error":
        raise ConfigError(f"{output} exists; pass --overwrite (or --mode append) or choose another output")
    if exists:
        _check_replaceable(output, out)
        _check_same_format(output, fmt, how, is_delta_table(out))
    target = OutputTarget(str(out), fmt, replace=exists and how == "overwrite", mode=how)
    _check_writable(out if exists and (target.delta_in_place or how == "append") else out.parent, out)
    return target


def _check_same_format(output: str | Path, fmt: str, mode: WriteMode, is_delta: bool) -> None:
    if mode == "append" and (fmt == "delta") != is_delta:
        held = "a Delta table" if is_delta else "not a Delta table"
        raise ConfigError(f"{output} is {held}; --mode append adds to an output of the same format "
                          f"(--output-format {'delta' if is_delta else 'parquet'})")


def _check_remote_output(output: str, *, fmt: str, mode: WriteMode, input_path: str | Path | None,
                         storage_options: dict[str, str] | None) -> OutputTarget:
    """:func:`check_output` for a URI: not the input, its bucket reachable, an existing output only in modes
    ``append`` and ``overwrite``."""
    if input_path is not None and is_uri(input_path):
        out, source = output.rstrip("/") + "/", str(input_path).rstrip("/") + "/"
        if out.startswith(source) or source.startswith(out):
            raise ConfigError(f"OUTPUT {output} overlaps the input {input_path}; choose an OUTPUT outside it")
    fs, where = arrow_filesystem(output, storage_options)
    bucket = where.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ConfigError(f"cannot write the output {output}: no such bucket or container {bucket!r}; "
                              "create it or choose another OUTPUT")
        exists = fs.get_file_info(where).type != pafs.FileType.NotFound
        if exists and mode == "error":
            raise ConfigError(f"{output} exists; pass --overwrite (or --mode append) or choose another output")
        if exists:
            _check_same_format(output, fmt, mode, is_delta_table(output, storage_options))
    except OSError as exc:
        raise ConfigError(f"cannot write the output {output}: {' '.join(str(exc).split())}; check the URI and "
                          "--storage-option settings (endpoint, credentials, region)") from exc
    return OutputTarget(output, fmt, replace=exists and mode == "overwrite", mode=mode,
                        storage_options=storage_options)


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
