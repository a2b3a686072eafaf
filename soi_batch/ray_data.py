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
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from tqdm.auto import tqdm

from soi_batch.bundle import ModelBundle
from soi_batch.checks import model_for_workers, require_dataset_text
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.engines.threads import set_torch_threads
from soi_batch.errors import ConfigError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.storage import (
    StorageOptions,
    absolute_location,
    arrow_filesystem,
    delta_storage_options,
    is_uri,
)
from soi_batch.tables import (
    OUTPUT_FORMATS,
    WRITE_MODES,
    InputSpec,
    OutputFormat,
    WriteMode,
    append_results,
    arrow_reads_directly,
    check_result_names,
    classify_valid_utf8,
    csv_options,
    read_table,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How :func:`classify_dataset` runs on Ray Data; ``concurrency`` and ``accelerator_type`` as in
    ``ray.data.llm``'s processor configs."""

    num_actors: int | None = None
    """Actors in a fixed pool. None: ``concurrency``'s, else one per GPU when the engine uses GPUs, else 1."""
    gpus_per_actor: float | None = None
    """None: 1 when the cluster has GPUs (or ``accelerator_type`` is set) and the engine is not
    forced to CPU, else 0."""
    cpus_per_actor: float | None = None
    """Ray CPU resources each actor reserves.  None: 1, except on a local Ray this process started
    with too few CPUs for that, where the actors share what is left after one CPU for Ray Data's
    read and write tasks (0 each on a 1-CPU Ray).  A number is used as given, and refused when it
    leaves the read tasks no CPU on such a Ray."""
    torch_threads: int | None = None
    """torch threads in each CPU actor (None: this machine's cores / actors)."""
    batch_size: int | None = None
    """Rows per map_batches call; the classifier splits them into engine batches. None: 512 on
    CPU; on GPUs 8 engine batches, so that concurrent engine batches keep the GPU busy.  Blocks are
    split to this many rows before the actors (a large Parquet row group is read as one block)."""
    concurrency: int | tuple[int, int] | None = None
    """Actors: ``n`` for a fixed pool of n, ``(m, n)`` for an autoscaling pool between m and n
    (``1 <= m <= n``), None for the default of ``num_actors``.  Set this or ``num_actors``, not both."""
    accelerator_type: str | None = None
    """The accelerator each actor needs, e.g. ``"H100"``, ``"A10G"`` (Ray's
    ``ray.util.accelerators`` names); None: any.  Implies GPUs; checked against the cluster's
    ``accelerator_type:…`` resources before the Dataset runs."""

    def __post_init__(self) -> None:
        for name in ("num_actors", "torch_threads", "batch_size"):
            value = getattr(self, name)
            if value is not None and not _whole_at_least_1(value):
                raise ConfigError(f"{name} must be a whole number ≥ 1, or None for the default; got {value!r}")
        if self.gpus_per_actor is not None:
            _check_resource("gpus_per_actor", self.gpus_per_actor, ", or None for the default")
        if self.cpus_per_actor is not None:
            _check_resource("cpus_per_actor", self.cpus_per_actor, ", or None for the default")
        if self.concurrency is not None:
            if self.num_actors is not None:
                raise ConfigError(f"set concurrency ({self.concurrency!r}) or num_actors ({self.num_actors}), not both")
            c = self.concurrency
            fixed = _whole_at_least_1(c)
            scaling = isinstance(c, tuple) and len(c) == 2 and all(_whole_at_least_1(x) for x in c) and c[0] <= c[1]
            if not (fixed or scaling):
                raise ConfigError(f"concurrency must be a whole number n ≥ 1 (a fixed pool of n actors) or a pair "
                                  f"(m, n) with 1 <= m <= n (an autoscaling pool), or None; got {c!r}")
        if self.accelerator_type is not None and (not isinstance(self.accelerator_type, str)
                                                  or not self.accelerator_type.strip()):
            raise ConfigError(f"accelerator_type must be a Ray accelerator name such as 'H100' or 'A10G', or None; "
                              f"got {self.accelerator_type!r}")
        if self.accelerator_type is not None and self.gpus_per_actor == 0:
            raise ConfigError(f"accelerator_type={self.accelerator_type!r} asks for a GPU, gpus_per_actor=0 for none: "
                              "drop one of them")


def _whole_at_least_1(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _check_resource(name: str, value: object, or_none: str = "") -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a number ≥ 0 (Ray resources each actor reserves){or_none}; got {value!r}")


class ClassifyBatch:
    """Ray Data actor: one :class:`Classifier` per actor, Arrow batch in → Arrow batch out."""

    def __init__(self, model: str | None, config: ClassifierConfig, text_col: str, run_id: str,
                 keep_probabilities: bool, torch_threads: int | None, column_prefix: str = "",
                 row_counter: Any = None) -> None:
        if torch_threads:
            set_torch_threads(torch_threads)  # this actor owns its process
        self.classifier = Classifier.load(model, config)
        self.text_col = text_col
        self.run_id = run_id
        self.keep_probabilities = keep_probabilities
        self.column_prefix = column_prefix
        self.row_counter = row_counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = classify_valid_utf8(batch, self.text_col, self._classify, error_col=self.column_prefix + "error")
        if self.row_counter is not None:
            self.row_counter.add.remote(out.num_rows)  # fire and forget: progress only
        return out

    def _classify(self, batch: pa.Table) -> pa.Table:
        if not self.column_prefix:
            return self.classifier.classify_table(batch, text_col=self.text_col, run_id=self.run_id,
                                                  keep_probabilities=self.keep_probabilities)
        texts = pa.table({self.text_col: batch.column(self.text_col)})
        results = self.classifier.classify_table(texts, text_col=self.text_col, run_id=self.run_id,
                                                 keep_probabilities=self.keep_probabilities).drop_columns([self.text_col])
        return append_results(batch, results.rename_columns([self.column_prefix + n for n in results.column_names]))


def _cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def _cluster_gpus() -> int:
    return int(_cluster_resources().get("GPU", 0))


def _check_accelerator(accelerator_type: str) -> None:
    """The cluster must offer ``accelerator_type`` now, or the actors would wait for it forever."""
    have = sorted(k.split(":", 1)[1] for k in _cluster_resources() if k.startswith("accelerator_type:"))
    if accelerator_type not in have:
        raise ConfigError(f"accelerator_type={accelerator_type!r}: the Ray cluster has no such accelerator "
                          f"(it has {have or 'none'}); use one of those, or leave accelerator_type unset")


def _started_here() -> bool:
    """True when this process started the Ray cluster (``ray.init()`` without an address): a
    cluster of fixed size that no autoscaler will grow."""
    import ray._private.worker as ray_worker  # no public API tells a cluster this driver started

    return bool(getattr(getattr(ray_worker, "_global_node", None), "head", False))


def _cpus_per_actor(first_actors: int, chosen: float | None) -> float:
    """CPUs each actor reserves: ``chosen``, else 1, or on a local Ray this process started with
    fewer than ``first_actors`` + 1 CPUs an equal share of all but one of them; then checked by
    :func:`_check_cpus_left` against the cluster."""
    cpus = _cluster_resources().get("CPU", 0.0)
    if chosen is None:
        chosen = 1.0
        if first_actors + 1 > cpus and _started_here():
            chosen = max(cpus - 1, 0.0) / first_actors
            log.info("the local Ray has %g CPU(s): each of the %d classify actor(s) reserves %.2g of them, so that "
                     "one is left for Ray Data's read and write tasks", cpus, first_actors, chosen)
    _check_cpus_left(first_actors, chosen, cpus)
    return chosen


def _check_cpus_left(first_actors: int, cpus_per_actor: float, cpus: float) -> None:
    """Ray Data's read, split and write tasks need a CPU the actors have not reserved (of the
    cluster's ``cpus``), or the run waits forever with its actors idle.  An error on a cluster this
    process started (it cannot grow), a WARNING on any other (an autoscaler may add nodes)."""
    reserved = first_actors * cpus_per_actor
    if reserved + 1 <= cpus:
        return
    problem = (f"the Ray cluster has {cpus:g} CPU(s) and the classify actors reserve {reserved:g} of them "
               f"({first_actors} actor(s) × {cpus_per_actor:g} CPU): Ray Data's read and write tasks need "
               f"1 CPU more, or the run waits forever")
    if not _started_here():
        log.warning("%s, unless the cluster scales up", problem)
        return
    raise ConfigError(f"{problem}. Give the local Ray more CPUs (--ray-num-cpus, ray.init(num_cpus=…)), or start "
                      f"fewer actors or reserve less per actor (--num-actors / --cpus-per-actor; the nightly config's "
                      f"ray: num_actors / cpus_per_actor; RayOptions) so that at most {max(cpus - 1, 0):g} CPU(s) "
                      f"are reserved (0 per actor is allowed: the actors then share the CPUs)")


def classify_dataset(ds: Any, *, text_col: str, model: str | Path | ModelBundle | None = None,
                     config: ClassifierConfig | None = None, run_id: str | None = None,
                     keep_probabilities: bool = False, options: RayOptions | None = None,
                     cache_dir: Path | None = None, column_prefix: str = "",
                     row_counter: Any = None) -> Any:
    """``ds`` (a ``ray.data.Dataset``) with the result columns appended, lazily.

    ``model`` (a name, bundle directory or hub id, or a :class:`~soi_batch.bundle.ModelBundle`
    from :func:`~soi_batch.bundle.load_bundle`, not checked again) is resolved on the driver: a named
    model is built once into ``cache_dir`` and every actor loads the same directory.  Ray must already be initialised
    (``ray.init()``); this function does not start it.  The model bundle, ``text_col`` (present,
    string), that no column is named like a result column (case-insensitively, prefix included;
    :func:`~soi_batch.tables.check_result_names`), the settings against the actors' device and
    ``options.accelerator_type`` against the cluster are checked here, before the Dataset runs, and
    so is that the actors leave a CPU for Ray Data's read and write tasks (``cpus_per_actor`` None
    sees to it on a local Ray; a number that does not is an error on a local Ray this process
    started, a WARNING on a cluster that may scale up).

    ``run_id``: stored in every row's ``run_id`` column (None: a new uuid4 hex, logged).
    ``column_prefix``: put before every result column's name (e.g. ``"soi_"`` gives
    ``soi_source_code``), so that input columns named like result columns can be kept.
    ``options``: the actor pool (:class:`RayOptions`: ``concurrency``, ``accelerator_type``, …).
    ``row_counter``: an actor from :func:`start_row_counter`, to which every classified batch adds its rows.
    """
    config = ClassifierConfig() if config is None else config
    options = RayOptions() if options is None else options
    if not isinstance(column_prefix, str):
        raise ConfigError(f"column_prefix must be a string ('' for none), got {column_prefix!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigError(f"run_id must be a non-empty string, or None to generate one; got {run_id!r}")
    model_path = model_for_workers(model, cache_dir)  # BundleError now, not ActorDiedError from an actor later
    require_dataset_text(ds, text_col)
    schema = ds.schema()
    if schema is not None:
        results = [*RESULT_SCHEMA.names, *(PROBABILITIES_SCHEMA.names if keep_probabilities else [])]
        check_result_names(schema.names, [column_prefix + name for name in results], source="Ray Dataset")
    if options.accelerator_type is not None:
        _check_accelerator(options.accelerator_type)
    gpus = options.gpus_per_actor
    if gpus is None:
        wants_gpu = options.accelerator_type is not None or _cluster_gpus() > 0
        gpus = 1.0 if wants_gpu and config.device != "cpu" else 0.0
    if config.engine == "vllm" and gpus == 0:
        raise ConfigError("engine 'vllm' needs GPUs; the Ray cluster has none (use engine='hf')")
    if options.concurrency is not None:
        pool = options.concurrency
    elif options.num_actors is not None:
        pool = options.num_actors
    else:
        pool = max(1, int(_cluster_gpus() // gpus)) if gpus else 1
    most = pool[1] if isinstance(pool, tuple) else pool
    cpus = _cpus_per_actor(pool[0] if isinstance(pool, tuple) else pool, options.cpus_per_actor)
    if config.device == "auto":  # the actors' device, so settings that make no sense there fail now
        config = replace(config, device="cuda" if gpus else "cpu")
    batch_size = options.batch_size
    if batch_size is None:
        batch_size = max(512, 8 * config.batch_size) if gpus else 512
    if run_id is None:
        run_id = uuid.uuid4().hex
    log.info("Ray Data run %s: %s actor(s), %.2g GPU%s and %.2g CPU each, batches of %d rows", run_id,
             f"{pool[0]}..{pool[1]}" if isinstance(pool, tuple) else pool, gpus,
             f" ({options.accelerator_type})" if options.accelerator_type else "", cpus, batch_size)
    from ray.data import ActorPoolStrategy

    # Ray hands an actor whole blocks, and a Parquet row group (a whole file, from some writers) is
    # one block: split them, so that an actor holds about one batch whatever the input's layout
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    compute = (ActorPoolStrategy(min_size=pool[0], max_size=pool[1]) if isinstance(pool, tuple)
               else ActorPoolStrategy(size=pool))
    return ds.map_batches(
        ClassifyBatch,
        fn_constructor_kwargs={
            "model": model_path, "config": config, "text_col": text_col, "run_id": run_id,
            "keep_probabilities": keep_probabilities, "column_prefix": column_prefix,
            "row_counter": row_counter,
            "torch_threads": None if gpus else (options.torch_threads or max(1, (os.cpu_count() or 1) // most)),
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=compute,
        num_gpus=gpus,
        num_cpus=cpus,
        accelerator_type=options.accelerator_type,
    )  # Ray Data's actor pools restart dead actors and retry their batches by default


def read_dataset(spec: InputSpec, *, override_num_blocks: int | None = None) -> Any:
    """A lazy ``ray.data.Dataset`` over an input checked by :func:`soi_batch.tables.inspect_input`.

    The format is the one :func:`~soi_batch.tables.inspect_input` decided, and CSV is parsed with
    :func:`~soi_batch.tables.csv_options` (every column a string).  A local path is made absolute,
    since Ray's workers may run in another directory; a URI (``s3://…``) is read through the
    filesystem its ``spec.storage_options`` describe (:mod:`soi_batch.storage`).  An input Arrow
    cannot open as it is (``.csv.xz``: :func:`~soi_batch.tables.arrow_reads_directly`) is read on
    the driver by :func:`~soi_batch.tables.read_table` and handed to Ray whole.
    """
    import ray.data

    if not arrow_reads_directly(spec):
        return ray.data.from_arrow(read_table(spec))
    path = absolute_location(spec.path)
    if spec.format == "delta":
        return ray.data.read_delta(path, storage_options=delta_storage_options(path, spec.storage_options),
                                   override_num_blocks=override_num_blocks)
    filesystem = None
    if is_uri(path):
        filesystem, path = arrow_filesystem(path, spec.storage_options)
    if spec.format == "csv":
        read, parse, convert = csv_options(spec)
        return ray.data.read_csv(path, filesystem=filesystem, read_options=read, parse_options=parse,
                                 convert_options=convert, override_num_blocks=override_num_blocks)
    return ray.data.read_parquet(path, filesystem=filesystem, override_num_blocks=override_num_blocks)


def write_dataset(ds: Any, path: str | Path, *, fmt: OutputFormat, mode: WriteMode = "append",
                  partition_by: Sequence[str] | None = None, storage_options: StorageOptions | None = None) -> None:
    """Write a classified ``ray.data.Dataset``: a directory of Parquet files, or a Delta table.

    ``path``: a local path or a URI (``s3://bucket/results``), reached with ``storage_options``
    (:mod:`soi_batch.storage`).  ``mode``: ``"append"`` creates the output or adds to it;
    ``"error"`` refuses an existing one; ``"overwrite"`` replaces it — for Delta, a new table
    version holding only these rows (the schema replaced; older versions kept until vacuum), for
    Parquet, the directory's files are deleted first.  ``partition_by``: columns whose values
    name the subdirectories (``col=value/``) the rows go to (Parquet and Delta alike).
    """
    from ray.data import SaveMode

    if fmt not in OUTPUT_FORMATS:  # before the Dataset runs
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
    if mode not in WRITE_MODES:
        raise ConfigError(f"write mode {mode!r} is not one of {list(WRITE_MODES)}")
    where = absolute_location(path)
    parts = list(partition_by) if partition_by else None
    save_mode = SaveMode(mode)
    filesystem = None
    fs_path = where
    if is_uri(where):
        filesystem, fs_path = arrow_filesystem(where, storage_options)
    if save_mode is SaveMode.ERROR:  # checked here, before the Dataset runs
        fs = filesystem or pafs.LocalFileSystem()
        if fs.get_file_info(fs_path).type != pafs.FileType.NotFound:
            raise ConfigError(f"{path} exists; pass mode='append' or mode='overwrite', or choose another output")
        if fmt == "delta":
            save_mode = SaveMode.APPEND  # Ray's Delta writer has append and overwrite only
    if fmt == "delta":
        ds.write_delta(where, mode=save_mode, partition_by=parts, filesystem=filesystem,
                       storage_options=delta_storage_options(where, storage_options))
    else:
        ds.write_parquet(fs_path, filesystem=filesystem, partition_cols=parts, mode=save_mode)


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             object_store_memory: int | None = None, quiet: bool = False) -> None:
    """Start local Ray (no dashboard) or connect to ``address``; a no-op when already running.

    ``num_cpus`` and ``object_store_memory`` (bytes) size a local Ray; a cluster keeps its own.
    No cluster at ``address`` (e.g. ``"auto"`` with none running) is a :class:`ConfigError`
    naming the address and the fix.
    ``quiet``: Ray's own log lines on this console at ERROR only, and the workers' output (library
    import warnings, weight-loading bars) not forwarded here; both stay in Ray's session log files.
    """
    import ray

    if ray.is_initialized():
        return
    level = logging.ERROR if quiet else logging.WARNING
    if address:
        try:
            ray.init(address=address, log_to_driver=not quiet, logging_level=level)
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at address {address!r} ({str(exc).splitlines()[0]}): start one "
                f"there first (`ray start --head` on the head node), pass the right address (--ray-address or "
                f"RAY_ADDRESS, e.g. ray://head:10001), or leave the address unset to start a local Ray") from None
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


@contextmanager
def row_progress(counter: Any, *, total: int | None, desc: str = "classified") -> Iterator[None]:
    """A tqdm bar on stderr fed by the actors' row counter (:func:`start_row_counter`) while the
    ``with`` body classifies: rows done / total, rows/s, ETA.  ``counter`` None: no bar."""
    if counter is None:
        yield
        return
    import ray

    def rows_done() -> int:
        return int(ray.get(counter.count.remote()))

    stop = threading.Event()
    with tqdm(total=total, unit="rows", desc=desc, dynamic_ncols=True, file=sys.stderr) as bar:

        def follow() -> None:  # a daemon thread: the body keeps the main thread, so Ctrl-C stops the run
            while not stop.wait(0.5):
                bar.update(rows_done() - bar.n)

        thread = threading.Thread(target=follow, name="soi-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
        bar.update(rows_done() - bar.n)
