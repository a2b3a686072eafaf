"""Ray Data pipeline: read → classify (one model per actor) → write, streaming.

``classify_dataset`` adds the result columns to any Ray Dataset with ``map_batches`` over an
actor class, so each actor loads the model once and keeps it.  A dead actor is restarted and
its in-flight batches are retried (Ray Data's defaults for actor pools); a row that cannot be
scored comes out with ``error`` set rather than failing the batch.  On GPU clusters each actor
takes one GPU (``num_gpus=1``) and the pool has one actor per GPU.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from soi_batch.checks import model_for_workers, require_dataset_text
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.engines.threads import set_torch_threads
from soi_batch.errors import ConfigError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.tables import (
    OUTPUT_FORMATS,
    InputSpec,
    OutputFormat,
    absolute_uri,
    arrow_reads_directly,
    check_result_names,
    classify_valid_utf8,
    csv_options,
    read_table,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    num_actors: int | None = None
    """Actors in the pool. None: one per GPU when the engine uses GPUs, else 1."""
    gpus_per_actor: float | None = None
    """None: 1 when the cluster has GPUs and the engine is not forced to CPU, else 0."""
    cpus_per_actor: float = 1.0
    """Ray CPU resources each actor reserves (leave some for the read and write tasks)."""
    torch_threads: int | None = None
    """torch threads in each CPU actor (None: this machine's cores / actors)."""
    batch_size: int | None = None
    """Rows per map_batches call; the classifier splits them into engine batches. None: 512 on
    CPU; on GPUs 8 engine batches, so that concurrent engine batches keep the GPU busy.  Blocks are
    split to this many rows before the actors (a large Parquet row group is read as one block)."""

    def __post_init__(self) -> None:
        for name in ("num_actors", "torch_threads", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Integral) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a whole number ≥ 1, or None for the default; got {value!r}")
        if self.gpus_per_actor is not None:
            _check_resource("gpus_per_actor", self.gpus_per_actor, ", or None for the default")
        _check_resource("cpus_per_actor", self.cpus_per_actor)


def _check_resource(name: str, value: object, or_none: str = "") -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a number ≥ 0 (Ray resources each actor reserves){or_none}; got {value!r}")


class ClassifyBatch:
    """Ray Data actor: one :class:`Classifier` per actor, Arrow batch in → Arrow batch out."""

    def __init__(self, model: str | None, config: ClassifierConfig, text_col: str, run_id: str,
                 keep_probabilities: bool, torch_threads: int | None, row_counter: Any = None) -> None:
        if torch_threads:
            set_torch_threads(torch_threads)  # this actor owns its process
        self.classifier = Classifier.load(model, config)
        self.text_col = text_col
        self.run_id = run_id
        self.keep_probabilities = keep_probabilities
        self.row_counter = row_counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = classify_valid_utf8(batch, self.text_col, self._classify)
        if self.row_counter is not None:
            self.row_counter.add.remote(out.num_rows)  # fire and forget: progress only
        return out

    def _classify(self, batch: pa.Table) -> pa.Table:
        return self.classifier.classify_table(batch, text_col=self.text_col, run_id=self.run_id,
                                              keep_probabilities=self.keep_probabilities)


def _cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def classify_dataset(ds: Any, *, text_col: str, model: str | Path | None = None,
                     config: ClassifierConfig = ClassifierConfig(), run_id: str, keep_probabilities: bool = False,
                     options: RayOptions = RayOptions(), cache_dir: Path | None = None,
                     row_counter: Any = None) -> Any:
    """``ds`` (a ``ray.data.Dataset``) with the result columns appended, lazily.

    ``model`` (a name, bundle directory or hub id) is resolved on the driver: a named model is built
    once into ``cache_dir`` and every actor loads the same directory.  Ray must already be initialised
    (``ray.init()``); this function does not start it.  The model bundle and ``text_col`` (present,
    string) are checked here, before the Dataset runs, and that no column is named like a result
    column (case-insensitively; :func:`~soi_batch.tables.check_result_names`).  ``row_counter``: an
    actor from :func:`start_row_counter`, to which every classified batch adds its rows.
    """
    model_path = model_for_workers(model, cache_dir)  # BundleError now, not ActorDiedError from an actor later
    require_dataset_text(ds, text_col)
    schema = ds.schema()
    if schema is not None:
        check_result_names(schema.names, [*RESULT_SCHEMA.names, *(PROBABILITIES_SCHEMA.names if keep_probabilities
                                                                  else [])], source="Ray Dataset")
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if _cluster_gpus() > 0 and config.device != "cpu" else 0.0
    if config.engine == "vllm" and gpus == 0:
        raise ConfigError("engine 'vllm' needs GPUs; the Ray cluster has none (use engine='hf')")
    actors = options.num_actors
    if actors is None:
        actors = max(1, int(_cluster_gpus() // gpus)) if gpus else 1
    if gpus and config.device == "auto":
        config = replace(config, device="cuda")
    batch_size = options.batch_size
    if batch_size is None:
        batch_size = max(512, 8 * config.batch_size) if gpus else 512
    log.info("Ray Data: %d actor(s), %.2g GPU and %.2g CPU each, batches of %d rows",
             actors, gpus, options.cpus_per_actor, batch_size)
    from ray.data import ActorPoolStrategy

    # Ray hands an actor whole blocks, and a Parquet row group (a whole file, from some writers) is
    # one block: split them, so that an actor holds about one batch whatever the input's layout
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(
        ClassifyBatch,
        fn_constructor_kwargs=dict(
            model=model_path, config=config, text_col=text_col, run_id=run_id,
            keep_probabilities=keep_probabilities, row_counter=row_counter,
            torch_threads=None if gpus else (options.torch_threads or max(1, (os.cpu_count() or 1) // actors)),
        ),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=options.cpus_per_actor,
    )  # Ray Data's actor pools restart dead actors and retry their batches by default


def read_dataset(spec: InputSpec, *, override_num_blocks: int | None = None) -> Any:
    """A lazy ``ray.data.Dataset`` over an input checked by :func:`soi_batch.tables.inspect_input`.

    The format is the one :func:`~soi_batch.tables.inspect_input` decided, and CSV is parsed with
    :func:`~soi_batch.tables.csv_options` (every column a string).  The path is made absolute,
    since Ray's workers may run in another directory.  An input Arrow cannot open as it is
    (``.csv.xz``: :func:`~soi_batch.tables.arrow_reads_directly`) is read on the driver by
    :func:`~soi_batch.tables.read_table` and handed to Ray whole.
    """
    import ray.data

    path = absolute_uri(spec.path)
    if not arrow_reads_directly(spec):
        return ray.data.from_arrow(read_table(spec))
    if spec.format == "csv":
        read, parse, convert = csv_options(spec)
        return ray.data.read_csv(path, read_options=read, parse_options=parse, convert_options=convert,
                                 override_num_blocks=override_num_blocks)
    if spec.format == "delta":
        return ray.data.read_delta(path, override_num_blocks=override_num_blocks)
    return ray.data.read_parquet(path, override_num_blocks=override_num_blocks)


def write_dataset(ds: Any, path: str | Path, *, fmt: OutputFormat,
                  mode: Literal["append", "overwrite"] = "append") -> None:
    """Write a classified ``ray.data.Dataset``: a directory of Parquet files, or a Delta table.

    Delta: ``mode="append"`` creates the table or appends to it; ``"overwrite"`` commits a new
    table version holding only these rows (the schema replaced; older versions kept until vacuum).
    """
    if fmt not in OUTPUT_FORMATS:  # before the Dataset runs
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    if fmt == "delta":
        ds.write_delta(absolute_uri(path), mode=mode)
    else:
        ds.write_parquet(absolute_uri(path))


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             object_store_memory: int | None = None, quiet: bool = False) -> None:
    """Start local Ray (no dashboard) or connect to ``address``; a no-op when already running.

    ``num_cpus`` and ``object_store_memory`` (bytes) size a local Ray; a cluster keeps its own.
    ``quiet``: Ray's own log lines on this console at ERROR only, and the workers' output (library
    import warnings, weight-loading bars) not forwarded here; both stay in Ray's session log files.
    """
    import ray

    if ray.is_initialized():
        return
    level = logging.ERROR if quiet else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=not quiet, logging_level=level)
    else:
        ray.init(num_cpus=os.cpu_count() if num_cpus is None else num_cpus, object_store_memory=object_store_memory,
                 include_dashboard=False, log_to_driver=not quiet, configure_logging=True, logging_level=level)


class RowCounter:
    """Rows classified so far, added by the classify actors: what a progress bar in rows shows."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def count(self) -> int:
        return self.rows


def start_row_counter() -> Any:
    """A :class:`RowCounter` Ray actor (no CPU reserved) to pass to :func:`classify_dataset` as ``row_counter``;
    read it with ``ray.get(counter.count.remote())``."""
    import ray

    return ray.remote(num_cpus=0)(RowCounter).remote()
